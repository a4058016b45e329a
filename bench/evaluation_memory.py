"""Memory and time of evaluate_retrieval on an SOP-sized set: 60,000 x 512 random float32
embeddings in ~11,000 classes of 2-12 images, Recall@{1,10,100,1000}, MAP@R, R-precision.

    OMP_NUM_THREADS=2 .venv/bin/python bench/evaluation_memory.py [--threads 2] [--no-nmi]

Prints the peak resident memory of the process (ru_maxrss, which includes the 123 MB of input
embeddings) and the wall time of the evaluation. NMI (k-means with k ~ 11,000) dominates the time;
--no-nmi measures the retrieval metrics alone.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


def sop_like_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    # 2 + Poisson(3.4), at most 12: mean ~5.4 images per class, as SOP's 60,502 / 11,316.
    sizes, total = [], 0
    while total < n:
        sizes.append(min(12, 2 + int(rng.poisson(3.4))))
        total += sizes[-1]
    labels = np.repeat(np.arange(len(sizes)), sizes)[:n]
    if (labels == labels[-1]).sum() == 1:  # the cut left a lone image: join it to the class before
        labels[-1] -= 1
    return rng.permutation(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--no-nmi", action="store_true")
    args = parser.parse_args()

    import faiss

    from metrix.evaluation.metrics import RECALL_KS, evaluate_retrieval

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    labels = sop_like_labels(args.n, rng)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    start = time.perf_counter()
    report = evaluate_retrieval(emb, labels, ks=RECALL_KS["sop"], nmi=not args.no_nmi, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux

    print(
        f"embeddings {args.n} x {args.dim}, {len(np.unique(labels))} classes, "
        f"threads {args.threads}, batch_size {args.batch_size}, nmi {not args.no_nmi}"
    )
    print(
        f"recall@K {report.recall_at}  MAP@R {report.map_at_r:.3f}  "
        f"R-precision {report.r_precision:.3f}  NMI {report.nmi}"
    )
    print(f"peak RSS {peak:.0f} MB (before evaluating: {rss_before:.0f} MB)")
    print(f"wall time {seconds:.1f} s")
    if peak > 4096:
        sys.exit("peak RSS above 4 GB")


if __name__ == "__main__":
    main()
