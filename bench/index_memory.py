"""Memory and quality of the index a build makes at scale: IVF-Flat against IVF-PQ (with the
exact re-rank from memory-mapped full vectors) at 100k and 1M synthetic vectors, through the
build's own path (vectors spooled to disk, the index updated chunk by chunk, nprobe tuned for
recall@10 against exact search).

    .venv/bin/python bench/index_memory.py --counts 100000 1000000 --out bench/results/index_memory.json

Each case runs in a fresh process. Peak memory is the process's anonymous RSS sampled every 20 ms
(heap: what the build itself holds) and, beside it, ru_maxrss, which also counts the pages of
memory-mapped files the kernel kept resident (page cache it can reclaim). The vectors are 1,000
Gaussian clusters in a 64-dimensional subspace lifted to --dim dimensions, with a little noise in
all of them, on the unit sphere, spooled in chunks as a build spools embeddings. Search latency: single queries (a stored vector plus noise), p50.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CHUNK = 16_384
#: Embeddings of trained models vary along far fewer directions than they have dimensions; the
#: synthetic ones do too (isotropic noise in all 512 dimensions makes every point of a cluster
#: equidistant from the others, a worst case no product quantizer can rank).
INTRINSIC = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["ivf", "ivfpq"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # KIND:COUNT, run in this process
    args = parser.parse_args()
    if args.case:
        kind, count = args.case.split(":")
        print(json.dumps(run_case(kind, int(count), args.dim)))
        return
    rows = []
    for count in args.counts:
        for kind in args.kinds:
            done = subprocess.run(
                [sys.executable, __file__, "--case", f"{kind}:{count}", "--dim", str(args.dim)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(_row(rows[-1]), flush=True)
    result = {"command": " ".join(["bench/index_memory.py", *sys.argv[1:]]), "machine": _machine(), "cases": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))


def run_case(kind: str, count: int, dim: int) -> dict:
    import faiss

    from metrix.index.plan import plan_index
    from metrix.index.spool import VectorSpool
    from metrix.index.update import updated_index
    from metrix.index.vectors import search_reranked, tune_ivfpq, tune_nprobe

    peak = _AnonPeak()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        spool = VectorSpool(Path(tmp) / "spool", dim)
        generator = np.random.default_rng(0)
        centres = generator.standard_normal((1000, INTRINSIC)).astype(np.float32)
        lift = np.linalg.qr(generator.standard_normal((dim, INTRINSIC)))[0].T.astype(np.float32)  # orthonormal rows
        rng = np.random.default_rng(1)
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            inner = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, INTRINSIC)).astype(np.float32)
            block = _unit(_unit(inner @ lift) + 0.1 / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32))
            for offset, vector in enumerate(block):
                spool.append(start + offset, vector)
        spooled = peak.value
        started = time.perf_counter()
        plan = plan_index(count, dim, kind)
        index, full = updated_index(None, [], spool, plan, Path(tmp) / "full")
        rerank = 0
        if kind == "ivfpq":
            nprobe, recall, rerank = tune_ivfpq(index, full, plan.rerank)
        else:
            nprobe, recall = tune_nprobe(index)
        build_seconds = time.perf_counter() - started
        faiss.extract_index_ivf(index).nprobe = nprobe
        faiss.write_index(index, str(Path(tmp) / "index.faiss"))
        index_file = (Path(tmp) / "index.faiss").stat().st_size
        full_file = (Path(tmp) / "full" / "vectors.npy").stat().st_size if full is not None else 0
        queries = next(spool.chunks())[1][:200] + 0.1 / np.sqrt(dim) * rng.standard_normal((200, dim)).astype(
            np.float32
        )
        times = []
        for query in _unit(queries):
            start = time.perf_counter()
            search_reranked(index, full, query[None], 10, rerank) if full is not None else index.search(query[None], 10)
            times.append(time.perf_counter() - start)
        peak.stop()
        return {
            "kind": kind,
            "count": count,
            "dim": dim,
            "factory": plan.factory,
            "estimated_bytes": plan.bytes,
            "index_file_bytes": index_file,
            "full_vectors_file_bytes": full_file,
            "spooled_anon_peak_mb": spooled / 2**20,
            "anon_peak_mb": peak.value / 2**20,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "build_seconds": build_seconds,
            "nprobe": nprobe,
            "rerank": rerank,
            "recall_at_10": recall,
            "p50_ms": 1000 * float(np.median(times)),
        }


class _AnonPeak:
    """The highest RssAnon of this process, sampled in a thread."""

    def __init__(self, every: float = 0.02):
        self.value, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.value = max(self.value, int(line.split()[1]) * 1024)
            time.sleep(every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{cpu}, {os.cpu_count()} cores"


def _row(case: dict) -> str:
    return (
        f"| {case['count']:,} | {case['kind']} | `{case['factory']}` | {case['estimated_bytes'] / 1e6:.0f} | "
        f"{case['index_file_bytes'] / 1e6:.0f} | {case['full_vectors_file_bytes'] / 1e6:.0f} | "
        f"{case['anon_peak_mb']:.0f} | {case['ru_maxrss_mb']:.0f} | {case['build_seconds']:.1f} | "
        f"{case['nprobe']} | {case.get('rerank') or '-'} | {case['recall_at_10']:.3f} | {case['p50_ms']:.2f} |"
    )


def markdown(result: dict) -> str:
    head = (
        "| vectors | kind | faiss index | estimated RAM, MB | index file, MB | full vectors file, MB | "
        "peak heap (RssAnon), MB | ru_maxrss, MB | build s | nprobe | re-rank | recall@10 | p50 ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([f"{result['machine']}; `{result['command']}`", "", head, *map(_row, result["cases"])])


if __name__ == "__main__":
    main()
