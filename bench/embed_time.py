"""Decode + embed time of one query alone, in process: the floor under a whole HTTP query (issue 30's
target: a query's HTTP p50 at most 1.3x this). Each query image is read, decoded and prepared
(metrix.export.runtime.load_for_model, the server's path) and embedded by the model alone, one at a
time, as many rounds as asked; p50 and p99 in ms.

    .venv/bin/python bench/embed_time.py --model M --queries WORK/queries [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from metrix.export.runtime import load_embedder, load_for_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="a folder of query images")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    embedder = load_embedder(args.model)
    files = sorted(p for p in args.queries.rglob("*") if p.is_file())
    times = []
    for _ in range(args.rounds):
        for path in files:
            started = time.perf_counter()
            array, _ = load_for_model(path.name, embedder.metadata, path.read_bytes())
            embedder.embed(array[None])
            times.append(1000 * (time.perf_counter() - started))
    times.sort()
    result = {"queries": len(times), "p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
