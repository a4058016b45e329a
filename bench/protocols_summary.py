"""Metrix under both epoch-selection protocols (issue 25): for every regime and loss in the given
grid folders (bench/protocols.sh), none vs mixing with the test R@1 and MAP@R of

- ours: the epoch chosen on the validation classes (what `metrix evaluate` reports), and
- the official code's: the epoch with the best test R@1, reported only, never used;

the change in R@1 errors under each, whether it exceeds the seed spread, how much the choice on
test adds to each method (best-on-test minus validation-chosen R@1), and how much test R@1 moves
from epoch to epoch after the warm-up (the standard deviation of its epoch-to-epoch changes).

    .venv/bin/python bench/protocols_summary.py bench/results/protocols-*

"Beyond the seed spread", as in bench/full_recipe_summary.py: the difference of the means exceeds
the larger of the two standard deviations over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from full_recipe_summary import cell, verdict

PROTOCOLS = (
    ("validation epoch (ours)", "recall_at_1", "map_at_r"),
    ("best test epoch (official)", "best_test_recall_at_1", "best_test_map_at_r"),
)


def error_change(base: list[float], mixed: list[float]) -> str:
    return f"{100 * ((100 - statistics.mean(mixed)) / (100 - statistics.mean(base)) - 1):+.1f}%"


def epoch_jitter(row: dict, warmup: int = 1) -> float:
    """Standard deviation of the epoch-to-epoch change in test R@1, after the warm-up epochs."""
    values = [c["test_recall_at_1"] for c in row["curve"] if c["epoch"] > warmup]
    steps = [b - a for a, b in zip(values, values[1:])]
    return statistics.stdev(steps) if len(steps) > 1 else 0.0


def regime_rows(folder: Path, baseline: str) -> list[str]:
    rows = json.loads((folder / "results.json").read_text())
    groups: dict[tuple, list] = {}
    for name, row in rows.items():
        if name != "floor" and "best_test_recall_at_1" in row:
            groups.setdefault((row.get("tag", ""), row["loss"], row["mixup"]), []).append(row)
    regime = folder.name.removeprefix("protocols-")
    lines = []
    for (tag, loss, mixup), runs in sorted(groups.items()):
        base = groups.get((tag, loss, baseline))
        if mixup == baseline or not base:
            continue
        seeds = sorted({r["seed"] for r in base} & {r["seed"] for r in runs})
        base = [r for r in base if r["seed"] in seeds]
        runs = [r for r in runs if r["seed"] in seeds]
        for protocol, r1_key, map_key in PROTOCOLS:
            b1, m1 = [r[r1_key] for r in base], [r[r1_key] for r in runs]
            bm, mm = [r[map_key] for r in base], [r[map_key] for r in runs]
            lift = [
                statistics.mean(r["best_test_recall_at_1"] - r["recall_at_1"] for r in group) for group in (base, runs)
            ]
            jitter = [statistics.mean(epoch_jitter(r) for r in group) for group in (base, runs)]
            lines.append(
                f"| {regime}{', ' + tag if tag else ''} | {loss} | {mixup} | {len(seeds)} | {protocol} | {cell(b1)} | {cell(m1)} "
                f"| {error_change(b1, m1)} | {verdict(b1, m1)} | {cell(bm)} | {cell(mm)} | {verdict(bm, mm)} "
                f"| {lift[0]:+.2f} / {lift[1]:+.2f} | {jitter[0]:.2f} / {jitter[1]:.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="grid folders holding results.json")
    parser.add_argument("--baseline", default="none", help="the mixing the others are compared with")
    args = parser.parse_args()
    print(
        "| regime | loss | mixing | seeds | epoch chosen by | R@1 none | R@1 mixing | R@1 errors | R@1 verdict "
        "| MAP@R none | MAP@R mixing | MAP@R verdict | test choice adds to R@1 (none / mixing) "
        "| test R@1 epoch-to-epoch sd (none / mixing) |"
    )
    print("|---" * 14 + "|")
    for folder in args.results:
        if (folder / "results.json").is_file():
            print("\n".join(regime_rows(folder, args.baseline)))


if __name__ == "__main__":
    main()
