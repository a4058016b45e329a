"""Latency of a whole HTTP query to the server against the same query in process, with query
batching (app/batching.py) off and on.

Builds a 100,000-image index in the real format: 20 distinct pictures embedded by the model with
`build_index`, plus 99,980 hard links to them (real files, so the no-dead-links check stats each
hit) carrying random unit vectors. Then it times, with the server otherwise idle:
  in process   run_query (decode + embed + search + file checks) in this process, unbatched
  HTTP, 1      POST /api/search from one keep-alive client (httpx), server in its own process
  HTTP, 8      eight keep-alive clients at once (--clients)
each HTTP row once per server setting: batching off (max_batch 1) and/or on (--batch-wait-ms,
--max-batch), a fresh server process each (the one `metrix serve` runs: app/server.py's Server).
Usage: bench/api_latency.py --model RUN/checkpoints/epoch-NNNN/model.onnx [--queries 300]
       [--batching both|off|on] [--batch-wait-ms 2] [--max-batch 32] [--images 100000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from metrix.machine import cpu_name

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


def serve(index_dir: Path, port: int, wait_ms: float, max_batch: int) -> None:
    """The server process of one setting (until SIGTERM)."""
    from metrix.app.server import Server
    from metrix.index.live import LiveIndex

    Server(LiveIndex(index_dir), port=port, batch_wait_ms=wait_ms, max_batch=max_batch).run()


def time_clients(url: str, payloads: list, queries: int, clients: int) -> tuple[list[float], list[float], float]:
    """(one client's latencies, `clients` clients' latencies, those clients' wall time)."""
    import httpx

    def client_run(count: int, out: list, offset: int = 0) -> None:
        with httpx.Client(timeout=60) as client:
            for n in range(count):
                name, data = payloads[(n + offset) % len(payloads)]
                start = time.perf_counter()
                response = client.post(url, files={"image": (name, data)}, data={"k": "8"})
                out.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text

    client_run(len(payloads), [])  # warm-up
    one: list[float] = []
    client_run(queries, one)
    many: list[float] = []
    threads = [threading.Thread(target=client_run, args=(queries // clients, many, i)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return one, many, time.perf_counter() - start


def http_rows(index_dir: Path, payloads: list, args, wait_ms: float, max_batch: int) -> tuple[dict, dict]:
    """The HTTP rows of one server setting, and what the server says of its batching."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(index_dir), "--port", str(port)]
        + ["--batch-wait-ms", str(wait_ms), "--max-batch", str(max_batch)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert server.poll() is None, f"the server exited with {server.returncode}"
                time.sleep(0.2)
        one, many, wall = time_clients(f"{base}/search", payloads, args.queries, args.clients)
        batching = httpx.get(f"{base}/info", timeout=10).json()["batching"]
    finally:
        server.terminate()
        server.wait(30)
    setting = "batching off" if max_batch == 1 else f"batching on ({wait_ms:g} ms, at most {max_batch})"
    rows = {
        f"HTTP, 1 client, {setting}": percentiles(one),
        f"HTTP, {args.clients} clients, {setting}": percentiles(many),
    }
    rows[f"HTTP, {args.clients} clients, {setting}"]["queries_per_s"] = len(many) / wall
    return rows, batching


def time_in_process(index_dir: Path, payloads: list, queries: int) -> list[float]:
    from metrix.app.search import run_query
    from metrix.index.live import LiveIndex

    live = LiveIndex(index_dir)
    for name, data in payloads:  # warm-up
        run_query(live, name, 8, data)
    seconds = []
    for n in range(queries):
        name, data = payloads[n % len(payloads)]
        start = time.perf_counter()
        result = run_query(live, name, 8, data)
        seconds.append(time.perf_counter() - start)
        assert result.hits[0].path == f"pictures/{name}", result.hits[0]
    return seconds


def print_report(report: dict) -> None:
    print("| path | p50 ms | p99 ms | queries |")
    print("|---|---|---|---|")
    for name, row in report["rows"].items():
        print(
            f"| {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['n']}"
            + (f" ({row['queries_per_s']:.0f}/s)" if "queries_per_s" in row else "")
            + " |"
        )
    print(
        f"HTTP adds {report['http_added_p50_ms']:.2f} ms to the in-process p50 (one client, first setting); "
        f"{report['cpu']}, {report['index_images']:,} images"
    )
    for stats in report["batching"].values():
        if "sizes" in stats:
            print(f"batch sizes with batching on (size: batches): {stats['sizes']}")


def main() -> None:
    from metrix.app.batching import DEFAULT_MAX_BATCH, DEFAULT_WAIT_MS
    from metrix.index.build import build_index

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batching", choices=("both", "off", "on"), default="both")
    parser.add_argument("--batch-wait-ms", type=float, default=DEFAULT_WAIT_MS)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    parser.add_argument(
        "--images", type=int, default=SIZE, help=f"index size, at least {PICTURES} (less: a quick check)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # internal: one server process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.port, args.batch_wait_ms, args.max_batch)
    if args.model is None:
        parser.error("--model is required")

    work = Path(tempfile.mkdtemp(prefix="metrix-api-bench-"))
    gallery, index_dir = work / "gallery", work / "index"
    sources = make_pictures(gallery / "pictures")
    build_index(gallery, args.model, index_dir, progress=False)
    grow_to(index_dir, gallery, sources, args.images)
    payloads = [(p.name, p.read_bytes()) for p in sources]

    rows, batching = {"in process": percentiles(time_in_process(index_dir, payloads, args.queries))}, {}
    settings = {"off": [1], "on": [args.max_batch], "both": [1, args.max_batch]}[args.batching]
    for max_batch in dict.fromkeys(settings):
        setting_rows, batching[str(max_batch)] = http_rows(index_dir, payloads, args, args.batch_wait_ms, max_batch)
        rows.update(setting_rows)
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "index_images": args.images,
        "model": str(args.model),
        "rows": rows,
        "batching": batching,
        "http_added_p50_ms": next(r["p50_ms"] for n, r in rows.items() if n.startswith("HTTP, 1 client"))
        - rows["in process"]["p50_ms"],
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
