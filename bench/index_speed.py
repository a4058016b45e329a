"""Index benchmarks: build throughput against pure onnxruntime inference on the same images, the
time of an incremental re-run that finds nothing to do, and search latency and recall@10 of exact
vs IVF search at 10k, 100k and 1M vectors.

    .venv/bin/python bench/index_speed.py --model runs/<run>/checkpoints/<epoch>/model.onnx \
        --images ../shared/datasets/cub100 --copies 2 --out bench/results/index_speed.json

The gallery is --copies copies of the --images folder (hard links where possible), so its size
is real files on disk. The scale points use synthetic clustered vectors (a mixture of 1,000
Gaussian clusters on the unit sphere, like class-structured embeddings; uniform random vectors
in 512-d have no neighbours worth finding). Search latency: one query at a time, as the app asks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metrix.export.runtime import load_embedder, load_for_model
from metrix.index.build import build_index
from metrix.index.gallery import find_images
from metrix.index.vectors import flat_index, ivf_index, tune_nprobe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {"command": " ".join(["bench/index_speed.py", *sys.argv[1:]]), "machine": _machine(args.threads)}

    with tempfile.TemporaryDirectory() as tmp:
        gallery = _gallery(args.images, Path(tmp) / "gallery", args.copies)
        result["build"] = _build(gallery, args.model, Path(tmp) / "index", args.threads)
    result["search"] = [_search(n, args.queries) for n in args.scales]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))


def _machine(threads: int) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{cpu}, {os.cpu_count()} cores, {threads} onnxruntime threads"


def _gallery(source: Path, target: Path, copies: int) -> Path:
    for copy in range(copies):
        for path in source.rglob("*"):
            if path.is_file():
                destination = target / f"copy{copy}" / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, destination)
                except OSError:
                    shutil.copy2(path, destination)
    return target


def _build(gallery: Path, model: Path, index_dir: Path, threads: int) -> dict:
    files, _ = find_images(gallery)
    embedder = load_embedder(model, threads)
    sample = np.stack([load_for_model(gallery / f.path, embedder.metadata)[0] for f in files[:1024]])
    embedder.embed(sample[:64])
    start = time.perf_counter()
    for i in range(0, len(sample), 64):
        embedder.embed(sample[i : i + 64])
    pure = len(sample) / (time.perf_counter() - start)

    report = build_index(gallery, model, index_dir, progress=False, threads=threads)
    command = [
        sys.executable,
        "-m",
        "metrix",
        "build-index",
        str(gallery),
        "--model",
        str(model),
        "--out",
        str(index_dir),
        "--no-progress",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    noop_process = time.perf_counter() - start
    start = time.perf_counter()
    again = build_index(gallery, model, index_dir, progress=False, threads=threads)
    noop = time.perf_counter() - start
    assert again.added == again.changed == again.removed == 0
    return {
        "images": report.count,
        "image_size": embedder.metadata.image_size,
        "onnxruntime_images_per_s": pure,
        "build_images_per_s": report.embedded_per_s,
        "build_vs_onnxruntime": report.embedded_per_s / pure,
        "build_seconds": report.seconds,
        "noop_rerun_seconds": noop,
        "noop_rerun_command_seconds": noop_process,
    }


def _clustered(n: int, dim: int = 512, clusters: int = 1000, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        vectors[start:stop] = centres[rng.integers(0, clusters, stop - start)] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _search(n: int, queries: int) -> dict:
    import faiss

    everything = _clustered(n + queries)  # queries from the same clusters, not in the index
    vectors, probes = everything[:n], everything[n:]
    ids = np.arange(n, dtype=np.int64)
    rows = {}
    exact = flat_index(vectors.shape[1])
    exact.add_with_ids(vectors, ids)
    _, truth = exact.search(probes, 10)
    start = time.perf_counter()
    ivf = ivf_index(vectors)
    ivf.add_with_ids(vectors, ids)
    nprobe, build_recall = tune_nprobe(ivf)
    ivf_build = time.perf_counter() - start
    faiss.extract_index_ivf(ivf).nprobe = nprobe
    for name, index in (("exact IDMap2,Flat", exact), (f"IVF{ivf.nlist},Flat nprobe {nprobe}", ivf)):
        latencies, found = [], []
        for probe in probes:
            start = time.perf_counter()
            _, got = index.search(probe[None], 10)
            latencies.append(time.perf_counter() - start)
            found.append(got[0])
        recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
        rows[name] = {
            "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "recall_at_10": float(recall),
        }
    return {"vectors": n, "ivf_build_and_tune_seconds": ivf_build, "ivf_recall_at_build": build_recall, "rows": rows}


def markdown(result: dict) -> str:
    b = result["build"]
    lines = [
        result["machine"],
        "",
        f"Build of {b['images']} images at {b['image_size']} px: {b['build_images_per_s']:.1f} images/s embedding "
        f"(decode + resize + embed) vs {b['onnxruntime_images_per_s']:.1f} images/s for onnxruntime alone on "
        f"preprocessed images: {100 * b['build_vs_onnxruntime']:.0f}%; {b['build_seconds']:.0f} s in all.",
        f"Re-run with nothing to do: {b['noop_rerun_seconds']:.2f} s in process, "
        f"{b['noop_rerun_command_seconds']:.2f} s as a command (start-up included).",
        "",
        "| vectors | index | p50 ms | p99 ms | recall@10 vs exact |",
        "|---|---|---|---|---|",
    ]
    for point in result["search"]:
        for name, row in point["rows"].items():
            lines.append(
                f"| {point['vectors']:,} | {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['recall_at_10']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
