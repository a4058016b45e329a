"""What marks buy: fine-tuning on the marks of simulated users (issue 40, item 6; docs/feedback.md).

A dataset's test classes (the folder's default split: the second half of its classes; never
trained on by anything else here) are split per class, with the seed, into a query pool (40%),
a gallery (30%) and measured images (30%). The gallery is indexed with the base model (the
untrained backbone at the recipe's input size: what `build-index` serves before any training).
A simulated user searches N images of the pool and marks the top 8 right or wrong by their label
(the oracle), and the marks are kept as `metrix serve` keeps them (index/kept_queries.py).
`metrix train --data GALLERY --feedback INDEX --recipe R` then fine-tunes, with and without
Metrix mixing. The measured images, never indexed, marked or trained on, are searched among
each other with the base and the fine-tuned model: MAP@R and R@1, the paired difference with its
bootstrap interval (metrix/evaluation/bootstrap.py).

    .venv/bin/python bench/feedback_users.py --data ../shared/datasets/cub100 --queries 50 200 1000 --seeds 0 1 2

Results (resumable: finished rows are skipped) in bench/results/feedback-users-SET/results.json and
results.md; the work folders (gallery links, indexes, runs) under --work.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from metrix.datasets.folder import load_image_folder
from metrix.evaluation.bootstrap import paired_difference
from metrix.evaluation.metrics import query_scores
from metrix.export.runtime import load_embedder, load_for_model
from metrix.index.build import build_index
from metrix.index.kept_queries import KeptQueries
from metrix.index.store import open_index
from metrix.machine import cpu_name
from metrix.training.config import resolve_config

TOP = 8
SHARES = (0.4, 0.3)  # query pool, gallery; the rest is measured


def metrix(*args) -> str:
    done = subprocess.run([sys.executable, "-m", "metrix", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"metrix {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def split(data: Path, seed: int) -> tuple[list, list, list]:
    by_class: dict[int, list] = {}
    for sample in load_image_folder(data).test.samples:
        by_class.setdefault(sample.label, []).append(sample)
    pool, gallery, measured = [], [], []
    for label, samples in sorted(by_class.items()):
        samples = sorted(samples, key=lambda s: s.path)
        random.Random(f"{seed}:{label}").shuffle(samples)
        a, b = round(SHARES[0] * len(samples)), round((SHARES[0] + SHARES[1]) * len(samples))
        pool += samples[:a]
        gallery += samples[a:b]
        measured += samples[b:]
    return pool, gallery, measured


def link_gallery(samples, folder: Path) -> Path:
    for sample in samples:
        link = folder / sample.path.parent.name / sample.path.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(sample.path.resolve())
    return folder


def simulate_user(index_dir: Path, model: Path, queries) -> None:
    """Each query searched with the serving model; its top TOP marked by the label oracle."""
    index, embedder, kept = open_index(index_dir), load_embedder(model), KeptQueries(index_dir, limit=len(queries))
    for sample in queries:
        vector = embedder.embed(load_for_model(sample.path, embedder.metadata)[0][None])
        hits = index.search(vector, TOP)[0]
        label = sample.path.parent.name
        kept.keep(
            sample.path.read_bytes(),
            sample.path.name,
            right=tuple(h.path for h in hits if h.label == label),
            wrong=tuple(h.path for h in hits if h.label != label),
        )
    index.close()


def scores(model: Path, samples) -> dict[str, np.ndarray]:
    embedder = load_embedder(model)
    vectors = np.concatenate(
        [
            embedder.embed(np.stack([load_for_model(s.path, embedder.metadata)[0] for s in samples[i : i + 64]]))
            for i in range(0, len(samples), 64)
        ]
    )
    return query_scores(vectors, [s.label for s in samples])


def difference(tuned: dict, base: dict, key: str) -> dict:
    diff = paired_difference(100 * tuned[key], 100 * base[key])
    return {**diff.to_dict(), "verdict": diff.verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--queries", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--mixup", nargs="+", default=["none", "feature"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/feedback-users"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    name = args.data.resolve().name
    out = args.out or Path(__file__).parent / "results" / f"feedback-users-{name}"
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    work = args.work / name
    size = resolve_config(recipe=args.recipe).image_size
    base = work / f"{args.backbone}-{size}-base.onnx"
    if not base.is_file():
        work.mkdir(parents=True, exist_ok=True)
        metrix("export", "--backbone", args.backbone, "--image-size", size, "--output", base)

    for seed in args.seeds:
        pool, gallery_samples, measured = split(args.data, seed)
        base_scores = None
        for n in args.queries:
            queries = random.Random(f"queries:{seed}").sample(pool, min(n, len(pool)))
            for mixup in args.mixup:
                row = f"n{n}-{mixup}-s{seed}"
                if row in results:
                    continue
                base_scores = base_scores or scores(base, measured)
                gallery = link_gallery(gallery_samples, work / f"s{seed}" / "gallery")
                index_dir = work / f"s{seed}" / f"index-n{n}"
                if not index_dir.is_dir():
                    build_index(gallery, base, index_dir, progress=False)
                    simulate_user(index_dir, base, queries)
                run = work / f"s{seed}" / f"run-{row}"
                start = time.perf_counter()
                trained = metrix(
                    "train", "--data", gallery, "--feedback", index_dir, "--recipe", args.recipe, "--mixup", mixup,
                    "--seed", seed, "--out", run, "--no-progress", "--no-floor-check",
                )  # fmt: skip
                seconds = time.perf_counter() - start
                metrix("export", run)
                tuned = scores(run / "checkpoints" / (run / "best").read_text().strip() / "model.onnx", measured)
                data_line = next(line for line in trained.splitlines() if line.startswith("training on feedback"))
                results[row] = {
                    "queries": len(queries),
                    "mixup": mixup,
                    "seed": seed,
                    "recipe": args.recipe,
                    "training_data": data_line,
                    "measured_images": len(measured),
                    "gallery_images": len(gallery_samples),
                    "train_seconds": seconds,
                    "base": {"map_at_r": 100 * float(base_scores["map_at_r"].mean()), "recall_at_1": 100 * float(base_scores["r1"].mean())},
                    "tuned": {"map_at_r": 100 * float(tuned["map_at_r"].mean()), "recall_at_1": 100 * float(tuned["r1"].mean())},
                    "difference": {"map_at_r": difference(tuned, base_scores, "map_at_r"), "recall_at_1": difference(tuned, base_scores, "r1")},
                    "per_query_map_at_r_difference": (100 * (tuned["map_at_r"] - base_scores["map_at_r"])).round(4).tolist(),
                    "cpu": cpu_name(),
                }  # fmt: skip
                results_file.write_text(json.dumps(results, indent=1))
                print(
                    f"{name} {row}: MAP@R {results[row]['tuned']['map_at_r']:.2f} vs {results[row]['base']['map_at_r']:.2f}",
                    flush=True,
                )
    (out / "results.md").write_text(table(name, results))
    print(table(name, results))


def table(name: str, results: dict) -> str:
    """Per (marked queries, mixing): seeds, base and tuned MAP@R (means over seeds), the paired
    difference pooled over every seed's measured images (its interval resamples images, not seeds:
    the per-seed differences show the seeds' spread), R@1; then feature mixing against none, paired
    by seed and image."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in results.values():
        groups.setdefault((row["queries"], row["mixup"]), []).append(row)
    lines = [
        f"| {name} | mixing | seeds | base MAP@R | tuned MAP@R | MAP@R change [95%] | per seed | R@1 base -> tuned | train s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (n, mixup), rows in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] != "none")):
        rows = sorted(rows, key=lambda r: r["seed"])
        pooled = np.concatenate([r["per_query_map_at_r_difference"] for r in rows])
        change = paired_difference(pooled, np.zeros_like(pooled))
        mean = lambda side, key: np.mean([r[side][key] for r in rows])  # noqa: E731
        seeds = ", ".join(f"{r['difference']['map_at_r']['mean']:+.2f}" for r in rows)
        lines.append(
            f"| {n} marked queries | {mixup} | {len(rows)} | {mean('base', 'map_at_r'):.2f} | {mean('tuned', 'map_at_r'):.2f} "
            f"| {change} | {seeds} | {mean('base', 'recall_at_1'):.2f} -> {mean('tuned', 'recall_at_1'):.2f} "
            f"| {np.mean([r['train_seconds'] for r in rows]):.0f} |"
        )
    lines += [
        "",
        f"| {name}: feature mixing against none | pairs (seeds) | MAP@R change [95%] | per seed |",
        "|---|---|---|---|",
    ]
    for n in sorted({n for n, _ in groups}):
        by_seed = {mixup: {r["seed"]: r for r in groups.get((n, mixup), [])} for mixup in ("none", "feature")}
        seeds = sorted(set(by_seed["none"]) & set(by_seed["feature"]))
        if not seeds:
            continue
        feature = np.concatenate([by_seed["feature"][s]["per_query_map_at_r_difference"] for s in seeds])
        none = np.concatenate([by_seed["none"][s]["per_query_map_at_r_difference"] for s in seeds])
        per_seed = ", ".join(
            f"{by_seed['feature'][s]['tuned']['map_at_r'] - by_seed['none'][s]['tuned']['map_at_r']:+.2f}"
            for s in seeds
        )
        lines.append(f"| {n} marked queries | {len(seeds)} | {paired_difference(feature, none)} | {per_seed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
