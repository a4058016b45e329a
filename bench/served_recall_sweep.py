"""IVF recall on the gallery's own vectors (the build's probe) against recall on real held-out
queries, nprobe by nprobe, on a bench/autofaiss_compare.py work folder; then nprobe tuned on half
of the real queries and measured on the other half, both ways (what `build-index --retune` does
with the queries a server kept). docs/index.md, "Recall on served queries".

    .venv/bin/python bench/served_recall_sweep.py --work /tmp/metrix-load --size 1000000

Reads WORK/compare-index-SIZE (an IVF-Flat generation), WORK/queries.npy and WORK/truth-SIZE.npy,
and WORK/vectors-SIZE.npy for the gallery probe. Writes --out (default
bench/results/served_recall_sweep.json) and prints markdown. One faiss thread for the timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

K = 10


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist())]))


def main() -> None:
    import faiss

    from metrix.index.store import open_index
    from metrix.machine import cpu_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--gallery-queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "served_recall_sweep.json")
    args = parser.parse_args()
    queries = np.load(args.work / "queries.npy").astype(np.float32)
    truth = np.load(args.work / f"truth-{args.size}.npy")[:, :K]
    gallery = open_index(args.work / f"compare-index-{args.size}")
    ivf = faiss.extract_index_ivf(gallery.index)
    vectors = np.load(args.work / f"vectors-{args.size}.npy", mmap_mode="r")
    rows = np.sort(np.random.default_rng(0).permutation(len(vectors))[: args.gallery_queries])
    probe = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, len(vectors), 65536):
        exact.add(np.ascontiguousarray(vectors[start : start + 65536], dtype=np.float32))
    probe_truth = exact.search(probe, K + 1)[1]  # its own row among them: left out below
    probe_truth = np.array([[i for i in row if i != own][:K] for own, row in zip(rows, probe_truth)])
    del exact
    faiss.omp_set_num_threads(1)

    def search(x: np.ndarray, nprobe: int) -> tuple[np.ndarray, float]:
        ivf.nprobe = nprobe
        started = time.perf_counter()
        found = gallery.index.search(x, K + 1)[1]
        return found, 1000 * (time.perf_counter() - started) / len(x)

    sweep = []
    nprobe = 1
    while nprobe <= min(ivf.nlist, 128):
        found, ms = search(queries, nprobe)
        own, _ = search(probe, nprobe)
        own = np.array([[i for i in row if i != r][:K] for r, row in zip(rows, own)])
        sweep.append(
            {"nprobe": nprobe, "gallery_recall": recall(own, probe_truth), "query_recall": recall(found[:, :K], truth)}
        )
        sweep[-1]["ms_per_query"] = ms
        nprobe *= 2
    order = np.random.default_rng(0).permutation(len(queries))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    split = []
    for tune, test in (halves, halves[::-1]):
        nprobe = 1
        while recall(search(queries[tune], nprobe)[0][:, :K], truth[tune]) < 0.99 and nprobe < ivf.nlist:
            nprobe *= 2
        split.append(
            {"nprobe": nprobe, "held_out_recall": recall(search(queries[test], nprobe)[0][:, :K], truth[test])}
        )
    result = {"command": " ".join(["bench/served_recall_sweep.py", *sys.argv[1:]]), "cpu": cpu_name()}
    args.out.write_text(json.dumps({**result, "sweep": sweep, "split": split}, indent=1))
    print("| nprobe | recall@10, gallery vectors | recall@10, real held-out queries | ms / query |")
    print("|---:|---:|---:|---:|")
    for row in sweep:
        print(
            f"| {row['nprobe']} | {row['gallery_recall']:.3f} | {row['query_recall']:.3f} | {row['ms_per_query']:.2f} |"
        )
    for row in split:
        print(f"tuned on half: nprobe {row['nprobe']}, recall on the other half {row['held_out_recall']:.3f}")


if __name__ == "__main__":
    main()
