"""What a filter costs: single-query latency of an exact filtered search (index/filters.py) against
the unfiltered search of the same index, for flat and IVF-Flat indexes of --count vectors and for
filters that let 0.1%, 1%, 10% and 100% of the gallery through, plus the SQLite query that finds
the matching ids (a label, a path prefix) in a metadata table of the same size.

    .venv/bin/python bench/filter_speed.py --count 1000000 --out bench/results/filter_speed.json

Vectors: 1,000 Gaussian clusters in a 64-dimensional subspace lifted to --dim, on the unit sphere
(as bench/index_memory.py). Labels: 1,000 folders of equal size; a filter of p% is the first
p% of them. Cases are interleaved over --rounds rounds; p50 of all queries.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from metrix.index.filters import SearchFilter, matching_ids, search_subset
from metrix.index.store import SCHEMA
from metrix.index.vectors import flat_index, ivf_index, tune_nprobe
from metrix.machine import cpu_name

LABELS = 1000
SHARES = (0.001, 0.01, 0.1, 1.0)


def vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lift = np.linalg.qr(rng.normal(size=(dim, 64)))[0].T.astype(np.float32)
    centres = rng.normal(size=(1000, 64)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 65536):
        n = min(65536, count - start)
        points = centres[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, 64)).astype(np.float32)
        block = points @ lift + 0.05 * rng.normal(size=(n, dim)).astype(np.float32)
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def metadata(count: int, folder: Path) -> sqlite3.Connection:
    database = sqlite3.connect(folder / "metadata.sqlite")
    database.executescript(SCHEMA)
    per_label = count // LABELS
    rows = (
        (i, f"label{i // per_label:04d}/{i:08d}.jpg", 0, 0, "", f"label{i // per_label:04d}", 1, 1)
        for i in range(count)
    )
    database.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    database.commit()
    return database


def p50_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    data = vectors(args.count, args.dim)
    ids = np.arange(args.count, dtype=np.int64)
    flat = flat_index(args.dim)
    flat.add_with_ids(data, ids)
    ivf = ivf_index(data)
    ivf.add_with_ids(data, ids)
    ivf.nprobe, recall = tune_nprobe(ivf)
    queries = data[np.random.default_rng(1).permutation(args.count)[: args.queries]]
    queries = queries + 0.02 * np.random.default_rng(2).normal(size=queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    with tempfile.TemporaryDirectory() as tmp:
        database = metadata(args.count, Path(tmp))
        per_label = args.count // LABELS
        filters = {
            share: SearchFilter(tuple(f"label{i:04d}" for i in range(max(1, round(share * LABELS)))))
            for share in SHARES
        }
        subsets = {share: matching_ids(database, f) for share, f in filters.items()}
        cases = {
            f"{name} unfiltered": (lambda q, index=index: index.search(q[None], args.k))
            for name, index in (("flat", flat), (f"ivf (nprobe {ivf.nprobe})", ivf))
        }
        for share, subset in subsets.items():
            for name, index in (("flat", flat), ("ivf", ivf)):
                cases[f"{name} filtered to {100 * share:g}%"] = lambda q, index=index, subset=subset: search_subset(
                    index, None, q[None], args.k, subset
                )
        sql = {
            "SQLite ids of 1 label": SearchFilter(("label0007",)),
            "SQLite ids of 100 labels": filters[0.1],
            "SQLite ids of a path prefix (1 label)": SearchFilter(path_prefix="label0007/"),
        }
        times = {name: [] for name in [*cases, *sql]}
        for _ in range(args.rounds):
            for name, run in cases.items():
                for query in queries:
                    started = time.perf_counter()
                    run(query)
                    times[name].append(time.perf_counter() - started)
            for name, search_filter in sql.items():
                started = time.perf_counter()
                found = matching_ids(database, search_filter)
                times[name].append(time.perf_counter() - started)
                assert len(found) in (per_label, 100 * per_label)
    rows = {name: p50_ms(t) for name, t in times.items()}
    result = {
        "command": "bench/filter_speed.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": f"{cpu_name()}, 2 cores",
        "count": args.count,
        "dim": args.dim,
        "ivf": {"nlist": ivf.nlist, "nprobe": ivf.nprobe, "recall_at_10": recall},
        "p50_ms": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    for name, value in rows.items():
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
