"""Does Metrix help? Train and evaluate one recipe over losses x mixing modes x seeds on one
dataset, next to the untrained backbone (the floor).

    .venv/bin/python bench/recipe_grid.py --data ../shared/datasets/cub100 --out bench/results/cpu_recipe-cub100
    .venv/bin/python bench/recipe_grid.py --recipe full-cpu --data ../shared/datasets/omniglot_small \
        --out bench/results/full_cpu-omniglot_small --runs ms:none ms:feature

Each run: `metrix train --recipe RECIPE` (default cpu) on the first half of the sorted classes (a fifth of them held
out for validation), then `metrix evaluate --checkpoint best --json` on the second half. The best
checkpoint is chosen on the validation classes, never the test classes. Every run also records the
test classes at every epoch (record_test), only to report the official code's protocol beside
ours: the epoch with the best test R@1 (`best_test_*` in results.json). Results are appended to
OUT/results.json as they come, so an interrupted benchmark keeps what it measured and a run already
there is not repeated; OUT/results.md gets the table (mean +- standard deviation over seeds).

--runs takes loss:mixup pairs; --set KEY=VALUE changes a recipe setting for every run (named with
--tag), for the attempts at making Metrix help. Input mixing needs pixels, so its runs do not use
the cached views (slow: the frozen stages run on every mixed image). A run's machine (CPU model) is
recorded with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r")
#: Per-epoch values kept in results.json (the run directories are not committed): enough to plot
#: training against validation retrieval, the over-fitting gap.
CURVE_KEYS = (
    "epoch",
    "loss",
    "clean",
    "mixed",
    "images_per_s",
    "seconds",
    "val_recall_at_1",
    "val_map_at_r",
    "train_recall_at_1",
    "train_map_at_r",
    "test_recall_at_1",
    "test_map_at_r",
)
GRID = (
    "ms:none",
    "ms:feature",
    "contrastive:none",
    "contrastive:feature",
    "pa:none",
    "pa:feature",
    "ms:embed",
    "pml-ms:none",
)


def metrix(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "metrix", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"metrix {' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--runs", nargs="*", default=list(GRID), help="loss:mixup pairs (none given: train nothing)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe settings to change")
    parser.add_argument("--tag", default="", help="name prefix of runs made with --set")
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate every finished run (and the floor) again, then train what is missing",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.reevaluate:
        results.pop("floor", None)
        for name, row in list(results.items()):
            if (args.out / name).is_dir():
                row.update(evaluate(args.out / name, results))
            else:
                print(f"{name}: run directory gone; keeping the metrics recorded when it was trained")
        results = {"floor": results.pop("floor"), **results} if results else results
        results_file.write_text(json.dumps(results, indent=1))
    settings = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}

    for seed in args.seeds:  # seed by seed: an interrupted grid has whole comparisons
        for spec in args.runs:
            loss, mixup = spec.split(":")
            name = f"{args.tag + '-' if args.tag else ''}{loss}-{mixup}-s{seed}"
            if name in results:
                if results[name].get("settings", settings) != settings:
                    raise SystemExit(
                        f"{results_file}: {name} was trained with {results[name]['settings']}, not {settings};"
                        " a folder holds one set of settings (use another --out or --tag)"
                    )
                continue
            run = args.out / name
            config = args.out / f"{name}.json"
            uncached = {"cached_views": 0} if mixup == "input" and args.recipe == "cpu" else {}
            config.write_text(json.dumps({"recipe": args.recipe, "record_test": True, **settings, **uncached}))
            start = time.perf_counter()
            resumed = (run / "latest").is_file()
            if resumed:  # an interrupted run: continue it where it stopped (train_seconds then covers the rest)
                metrix("train", "--resume", run, "--no-progress", "--no-floor-check")
            else:
                shutil.rmtree(run, ignore_errors=True)
                metrix(
                    "train",
                    "--data",
                    args.data,
                    "--config",
                    config,
                    "--loss",
                    loss,
                    "--mixup",
                    mixup,
                    "--seed",
                    seed,
                    "--out",
                    run,
                    "--no-progress",
                    "--no-floor-check",  # the grid measures the floor once, as its first row
                )
            seconds = time.perf_counter() - start
            report = evaluate(run, results)
            best = chosen_epochs(run)
            results[name] = {
                "tag": args.tag,
                "recipe": args.recipe,
                "settings": settings,
                "loss": loss,
                "mixup": mixup,
                "seed": seed,
                "train_seconds": seconds,
                "resumed": resumed,
                "cpu": cpu_model(),
                **best,
                **report,
            }
            results_file.write_text(json.dumps(results, indent=1))
            print(
                f"{name}: R@1 {report['recall_at_1']:.2f} MAP@R {report['map_at_r']:.2f} "
                f"(best epoch {best['best_epoch']}: val MAP@R {best['val_map_at_r']:.2f}; {seconds:.0f} s)",
                flush=True,
            )
    table = markdown_table(results)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def evaluate(run: Path, results: dict) -> dict:
    """The run's best checkpoint on the test classes; the first run evaluated also measures the
    untrained backbone at the same input size (results["floor"])."""
    command = ["evaluate", run, "--checkpoint", "best", "--json"]
    if "floor" in results:
        return json.loads(metrix(*command))
    both = json.loads(metrix(*command, "--floor"))
    results["floor"] = {
        "tag": "",
        "loss": "-",
        "mixup": "untrained floor",
        "seed": 0,
        "train_seconds": 0,
        **both["floor"],
    }
    return both["trained"]


def chosen_epochs(run: Path) -> dict:
    """The epoch with the highest validation MAP@R (what the trainer marks as best) and its
    validation metrics: what attempts are compared on. With the test classes recorded every epoch,
    also the official code's protocol, reported beside ours and never used: the epoch with the
    best test R@1 (the first of equals) and its test metrics."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["val_map_at_r"])
    curve = [{k: r[k] for k in CURVE_KEYS if k in r} for r in records]
    chosen = {
        "best_epoch": best["epoch"],
        "val_recall_at_1": best["val_recall_at_1"],
        "val_map_at_r": best["val_map_at_r"],
        "curve": curve,
    }
    if all("test_recall_at_1" in r for r in records):
        on_test = best_on_test(records)
        chosen.update(
            best_test_epoch=on_test["epoch"],
            best_test_recall_at_1=on_test["test_recall_at_1"],
            best_test_map_at_r=on_test["test_map_at_r"],
        )
    return chosen


def best_on_test(records: list[dict]) -> dict:
    """The official code's choice: the epoch whose test R@1 is highest (the first of equals)."""
    return max(records, key=lambda r: (r["test_recall_at_1"], -r["epoch"]))


def markdown_table(results: dict) -> str:
    groups: dict[tuple, list] = {}
    for row in results.values():
        groups.setdefault((row.get("tag", ""), row["loss"], row["mixup"]), []).append(row)
    header = ["settings", "loss", "mixing", "seeds", *METRICS, "train s/run"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    order = {spec: i for i, spec in enumerate(("-:untrained floor", *GRID, "ms:input"))}
    for (tag, loss, mixup), rows in sorted(
        groups.items(), key=lambda g: (g[0][0], order.get(f"{g[0][1]}:{g[0][2]}", 99))
    ):
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in rows]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}")
        seconds = statistics.mean(r["train_seconds"] for r in rows)
        described = ", ".join(f"{k}={v}" for k, v in rows[0].get("settings", {}).items()) or "recipe"
        if rows[0].get("machine"):  # trained elsewhere (input mixing on a GPU): its time is not comparable
            described += f", trained on {rows[0]['machine']}"
        lines.append(
            f"| {described if loss != '-' else '-'} | {loss} | {mixup} | {len(rows)} | "
            + " | ".join(cells)
            + f" | {seconds:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
