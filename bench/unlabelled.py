"""Training without labels (issue 17): the CPU recipe with --labels instances or clusters, with
and without Metrix feature mixing, on a labelled set whose labels are hidden from training.

    .venv/bin/python bench/unlabelled.py --data ../shared/datasets/cub100 --out bench/results/unlabelled-cub100
    .venv/bin/python bench/unlabelled.py --data ../shared/datasets/cub100 --out bench/results/unlabelled-cub100 \
        --runs instances:none --seeds 1 2
    .venv/bin/python bench/unlabelled.py --data ../shared/datasets/cub100 --out bench/results/unlabelled-cub100 \
        --runs instances:none --gallery

Inductive runs (the default) train on the images of the first half of the sorted classes, issue
4's training classes, without their labels (a fifth of those images held out for view agreement,
which chooses the epoch), and are evaluated on the second half, the unseen test classes, with
their labels. --gallery runs train on the test classes' own images without labels and are
evaluated on those same images: a user adapting the model to the gallery they search. The floor
(the untrained backbone at the recipe's 160 px) is measured on the same test images.

Every epoch also logs the test classes' R@1 and MAP@R (probe_*, never used to choose the epoch):
how well view agreement tracks real retrieval (the Spearman correlation of the two over a run's
epochs, and how much test MAP@R the epoch chosen by view agreement gives up against the best
epoch). Results go to OUT/results.json as they come; a
run already there is not repeated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from metrix.datasets import load_image_folder
from metrix.evaluation.metrics import evaluate_retrieval
from metrix.evaluation.run import evaluate_run
from metrix.machine import cpu_name
from metrix.training.config import resolve_config
from metrix.training.embedding import embed_samples
from metrix.training.trainer import train

METRICS = ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r")


def test_probe(samples):
    def probe(model, frozen_stages: int) -> dict:
        embeddings, labels = embed_samples(
            model, samples, batch_size=64, num_workers=2, channels_last=True, frozen_stages=frozen_stages
        )
        report = evaluate_retrieval(embeddings, labels, ks=(1,), nmi=False)
        return {"test_recall_at_1": report.recall_at[1], "test_map_at_r": report.map_at_r}

    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--runs",
        nargs="*",
        default=["instances:none", "instances:feature", "clusters:none", "clusters:feature"],
        help="labels:mixup pairs",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--gallery", action="store_true", help="train on the test classes' images, unlabelled")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe settings to change")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    labelled = load_image_folder(args.data)  # issue 4's split: the first half of the classes train
    names = labelled.class_names
    train_names, test_names = names[: len(names) // 2], names[len(names) // 2 :]
    settings = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}

    for spec in args.runs:
        labels, mixup = spec.split(":")
        for seed in args.seeds:
            name = f"{'gallery-' if args.gallery else ''}{labels}-{mixup}-s{seed}"
            if name in results:
                continue
            run = args.out / name
            config = resolve_config(
                recipe="cpu",
                data=args.data,
                labels=labels,
                mixup=mixup,
                seed=seed,
                train_classes=",".join(test_names if args.gallery else train_names),
                out=str(run),
                **settings,
            )
            start = time.perf_counter()
            train(config, progress=False, probe=test_probe(labelled.test.samples), log=lambda *a, **k: None)
            seconds = time.perf_counter() - start
            # the test classes' images (the training images themselves with --gallery), labelled
            report = evaluate_run(run, "best", data=args.data, log=lambda *a, **k: None)
            if "floor" not in results:
                floor = evaluate_run(run, "best", data=args.data, floor=True, log=lambda *a, **k: None)
                results["floor"] = {
                    "labels": "-",
                    "mixup": "untrained floor",
                    "seed": 0,
                    "train_seconds": 0,
                    **{m: floor[m] for m in METRICS},
                }
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            best = max(records, key=lambda r: r["val_view_agreement"])
            results[name] = {
                "labels": labels,
                "mixup": mixup,
                "seed": seed,
                "gallery": args.gallery,
                "settings": settings,
                "train_seconds": round(seconds),
                "cpu": cpu_name(),
                "best_epoch": best["epoch"],
                **{m: report[m] for m in METRICS},
                "curve": [
                    {
                        k: r[k]
                        for k in (
                            "epoch",
                            "loss",
                            "mixed",
                            "val_view_agreement",
                            "probe_test_recall_at_1",
                            "probe_test_map_at_r",
                        )
                    }
                    for r in records
                ],
            }
            results_file.write_text(json.dumps(results, indent=1))
            print(
                f"{name}: R@1 {report['recall_at_1']:.2f} MAP@R {report['map_at_r']:.2f} (epoch {best['epoch']} "
                f"by view agreement {best['val_view_agreement']:.1f}; {seconds:.0f} s)",
                flush=True,
            )
    (args.out / "results.md").write_text(markdown_table(results) + "\n")
    print(markdown_table(results))


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        for rank, index in enumerate(order):
            result[index] = float(rank)
        return result

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def markdown_table(results: dict) -> str:
    groups: dict[tuple, list] = {}
    for row in results.values():
        groups.setdefault((row.get("gallery", False), row["labels"], row["mixup"]), []).append(row)
    header = [
        "trained on",
        "labels",
        "mixing",
        "seeds",
        *METRICS,
        "epoch chosen",
        "spearman(agreement, test MAP@R)",
        "MAP@R below the best epoch",
        "train s/run",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for (gallery, labels, mixup), rows in sorted(
        groups.items(), key=lambda g: (g[0][0], g[0][1] != "-", g[0][1], g[0][2])
    ):
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in rows]
            cells.append(
                f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")
            )
        curves = [r["curve"] for r in rows if r.get("curve")]
        chosen = ", ".join(str(r["best_epoch"]) for r in rows) if curves else "-"
        rho = (
            ", ".join(
                f"{spearman([c['val_view_agreement'] for c in curve], [c['probe_test_map_at_r'] for c in curve]):.2f}"
                for curve in curves
            )
            or "-"
        )
        regret = (
            ", ".join(
                f"{max(c['probe_test_map_at_r'] for c in r['curve']) - next(c['probe_test_map_at_r'] for c in r['curve'] if c['epoch'] == r['best_epoch']):.2f}"
                for r in rows
                if r.get("curve")
            )
            or "-"
        )
        where = "-" if labels == "-" else ("test images" if gallery else "train classes")
        lines.append(
            f"| {where} | {labels} | {mixup} | {len(rows)} | "
            + " | ".join(cells)
            + f" | {chosen} | {rho} | {regret} | {statistics.mean(r['train_seconds'] for r in rows):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
