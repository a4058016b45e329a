"""Does Metrix help? Train and evaluate the CPU recipe over losses x mixing modes x seeds on
one dataset, next to the untrained backbone (the floor).

    .venv/bin/python bench/cpu_recipe.py --data ../shared/datasets/cub100 --losses ms \\
        --mixups none feature --seeds 0 1 2 --out bench/results/cpu_recipe-cub100

Each run: `metrix train --recipe cpu` on the first half of the classes (a share held out for
validation), then `metrix evaluate --checkpoint best --json` on the second half; the best
checkpoint is chosen on the validation classes, never the test classes. Results are appended to
OUT/results.json as they come, so an interrupted benchmark keeps what it measured; a run already
in results.json is not repeated. Prints a markdown table of mean +- standard deviation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r")


def metrix(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "metrix", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"metrix {' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--losses", nargs="+", default=["ms"])
    parser.add_argument("--mixups", nargs="+", default=["none", "feature"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-args", default="", help="extra `metrix train` arguments, e.g. '--epochs 5'")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}

    for loss in args.losses:
        for mixup in args.mixups:
            for seed in args.seeds:
                name = f"{loss}-{mixup}-s{seed}"
                if name in results:
                    continue
                run = args.out / name
                start = time.perf_counter()
                metrix("train", "--data", args.data, "--recipe", "cpu", "--loss", loss, "--mixup", mixup,
                       "--seed", seed, "--out", run, "--no-progress", *args.train_args.split())
                seconds = time.perf_counter() - start
                evaluate = ["evaluate", run, "--checkpoint", "best", "--json"]
                if "floor" in results:
                    report = json.loads(metrix(*evaluate))
                else:  # the first run also measures the untrained backbone, at the same input size
                    both = json.loads(metrix(*evaluate, "--floor"))
                    report = both["trained"]
                    results["floor"] = {"loss": "-", "mixup": "untrained floor", "seed": 0, "train_seconds": 0,
                                        **both["floor"]}
                results[name] = {"loss": loss, "mixup": mixup, "seed": seed, "train_seconds": seconds, **report}
                results_file.write_text(json.dumps(results, indent=1))
                print(f"{name}: R@1 {report['recall_at_1']:.2f} MAP@R {report['map_at_r']:.2f} ({seconds:.0f} s)",
                      flush=True)
    print(table(results))


def table(results: dict) -> str:
    groups: dict[tuple, list] = {}
    for row in results.values():
        groups.setdefault((row["loss"], row["mixup"]), []).append(row)
    lines = ["| loss | mixing | seeds | " + " | ".join(METRICS) + " | train s/run |", "|---" * (len(METRICS) + 4) + "|"]
    for (loss, mixup), rows in groups.items():
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in rows]
            spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}")
        seconds = statistics.mean(r["train_seconds"] for r in rows)
        lines.append(f"| {loss} | {mixup} | {len(rows)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
