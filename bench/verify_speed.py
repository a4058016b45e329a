"""What verifying a generation costs when it is opened (issue 26): for flat indexes of 100,000 and
1,000,000 vectors (512-d), the time faiss takes to read the index file, and the time to checksum
the same file with CRC32 (what index/integrity.py uses), SHA-256, BLAKE2b and SHA-1, warm (the file
in the page cache, as right after a build or on a busy server) and cold (caches dropped, where
allowed).

    .venv/bin/python bench/verify_speed.py --out bench/results/verify_speed.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
import zlib
from pathlib import Path

import faiss
import numpy as np

from metrix.machine import cpu_name

CHUNK = 16 * 2**20


def digest(path: Path, name: str) -> None:
    if name == "crc32":
        crc = 0
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK):
                crc = zlib.crc32(chunk, crc)
        return
    hasher = hashlib.new(name)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            hasher.update(chunk)


def timed(action, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(count: int, dim: int, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for start in range(0, count, 100_000):
        block = rng.standard_normal((min(100_000, count - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
    path = folder / f"flat-{count}.faiss"
    faiss.write_index(index, str(path))
    del index
    row = {
        "vectors": count,
        "dim": dim,
        "bytes": path.stat().st_size,
        "read_index_s": timed(lambda: faiss.read_index(str(path))),
    }
    for name in ("crc32", "sha256", "blake2b", "sha1"):
        row[f"{name}_s"] = timed(lambda name=name: digest(path, name))
    if drop_caches():
        start = time.perf_counter()
        faiss.read_index(str(path))
        row["cold_read_index_s"] = time.perf_counter() - start
        drop_caches()
        start = time.perf_counter()
        digest(path, "crc32")
        row["cold_crc32_s"] = time.perf_counter() - start
    path.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out else None) as folder:
        rows = [measure(count, args.dim, Path(folder)) for count in args.counts]
    result = {"cpu": cpu_name(), "threads": faiss.omp_get_max_threads(), "rows": rows}
    print(
        "| vectors | file | faiss read_index | CRC32 | SHA-256 | BLAKE2b | SHA-1 | CRC32 / read | cold read_index | cold CRC32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cold = f"{r['cold_read_index_s']:.2f} s | {r['cold_crc32_s']:.2f} s" if "cold_crc32_s" in r else "- | -"
        print(
            f"| {r['vectors']:,} | {r['bytes'] / 1e6:,.0f} MB | {r['read_index_s']:.2f} s | {r['crc32_s']:.2f} s | "
            f"{r['sha256_s']:.2f} s | {r['blake2b_s']:.2f} s | {r['sha1_s']:.2f} s | "
            f"{r['crc32_s'] / r['read_index_s']:.2f} | {cold} |"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
