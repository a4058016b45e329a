"""Latency of a whole HTTP query to `metrix serve` against the same query in process.

Builds a 100,000-image index in the real format: 20 distinct pictures embedded by the model with
`build_index`, plus 99,980 hard links to them (real files, so the no-dead-links check stats each
hit) carrying random unit vectors. Then it times, with the server otherwise idle:
  in process   run_query (decode + embed + search + file checks) in this process
  HTTP, 1      POST /api/search from one keep-alive client (httpx), server in its own process
  HTTP, 8      eight keep-alive clients at once
Usage: bench/api_latency.py --model RUN/checkpoints/epoch-NNNN/model.onnx [--queries 300] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from metrix.training.report import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SIZE = 100_000
PICTURES = 20


def make_pictures(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(PICTURES):
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(base).resize((320, 240), Image.Resampling.NEAREST)
        noisy = np.asarray(picture, dtype=np.int16) + rng.integers(-20, 21, (240, 320, 3))
        paths.append(folder / f"{i:02d}.jpg")
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def grow_to(index_dir: Path, gallery: Path, sources: list[Path], size: int) -> None:
    """A new generation: the built one plus hard links to `sources` with random unit vectors."""
    import faiss

    from metrix.index.store import MANIFEST_FILE, copy_rows, current_generation, write_generation

    generation = current_generation(index_dir)
    index = faiss.read_index(str(index_dir / generation / "index.faiss"))
    manifest = json.loads((index_dir / generation / MANIFEST_FILE).read_text())
    extra = size - index.ntotal
    links = gallery / "links"
    links.mkdir()
    rows_file = index_dir / ".rows-bench"
    database = copy_rows(index_dir, generation, rows_file)
    first = manifest["next_id"]
    rows = []
    for n in range(extra):
        source = sources[n % len(sources)]
        link = links / f"{n:06d}.jpg"
        os.link(source, link)
        stat = link.stat()
        rows.append(
            (first + n, link.relative_to(gallery).as_posix(), stat.st_size, stat.st_mtime_ns, "-", "links", 320, 240)
        )
    database.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    database.commit()
    database.close()
    vectors = np.random.default_rng(1).standard_normal((extra, index.d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.add_with_ids(vectors, np.arange(first, first + extra, dtype=np.int64))
    write_generation(index_dir, index, rows_file, {**manifest, "count": index.ntotal, "next_id": first + extra})


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "n": len(ms)}


def main() -> None:
    import httpx

    from metrix.app.search import run_query
    from metrix.index.build import build_index
    from metrix.index.live import LiveIndex

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="metrix-api-bench-"))
    gallery, index_dir = work / "gallery", work / "index"
    sources = make_pictures(gallery / "pictures")
    build_index(gallery, args.model, index_dir, progress=False)
    grow_to(index_dir, gallery, sources, SIZE)
    payloads = [(p.name, p.read_bytes()) for p in sources]

    live = LiveIndex(index_dir)
    assert len(live.snapshot().index) == SIZE
    for name, data in payloads:  # warm-up
        run_query(live, name, 8, data)
    in_process = []
    for n in range(args.queries):
        name, data = payloads[n % len(payloads)]
        start = time.perf_counter()
        result = run_query(live, name, 8, data)
        in_process.append(time.perf_counter() - start)
        assert result.hits[0].path == f"pictures/{name}", result.hits[0]
    del live

    port = 7900 + os.getpid() % 1000
    server = subprocess.Popen(
        [sys.executable, "-m", "metrix", "serve", "--index", str(index_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/search"
    try:
        for _ in range(600):
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)

        def client_run(count: int, out: list, offset: int = 0) -> None:
            with httpx.Client(timeout=60) as client:
                for n in range(count):
                    name, data = payloads[(n + offset) % len(payloads)]
                    start = time.perf_counter()
                    response = client.post(url, files={"image": (name, data)}, data={"k": "8"})
                    out.append(time.perf_counter() - start)
                    assert response.status_code == 200, response.text

        client_run(len(payloads), [])  # warm-up
        one = []
        client_run(args.queries, one)
        eight: list[float] = []
        threads = [threading.Thread(target=client_run, args=(args.queries // 8, eight, i)) for i in range(8)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)

    rows = {
        "in process": percentiles(in_process),
        "HTTP, 1 client": percentiles(one),
        "HTTP, 8 clients": percentiles(eight),
    }
    rows["HTTP, 8 clients"]["queries_per_s"] = len(eight) / wall
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "index_images": SIZE,
        "model": str(args.model),
        "rows": rows,
        "http_added_p50_ms": rows["HTTP, 1 client"]["p50_ms"] - rows["in process"]["p50_ms"],
    }
    print("| path | p50 ms | p99 ms | queries |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['n']}"
            + (f" ({row['queries_per_s']:.0f}/s)" if "queries_per_s" in row else "")
            + " |"
        )
    print(
        f"HTTP adds {report['http_added_p50_ms']:.2f} ms to the in-process p50 (one client); {report['cpu']}, {SIZE:,} images"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
