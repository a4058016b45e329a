"""Metrix under both epoch-selection protocols (issue 25): for every regime and loss in the given
grid folders (bench/protocols.sh), none vs mixing with the test R@1 and MAP@R of

- ours: the epoch chosen on the validation classes (what `metrix evaluate` reports), and
- the official code's: the epoch with the best test R@1, reported only, never used.

Three tables: the decisive one (a row per regime, data and loss; none and Metrix under each
protocol), the detailed one (the change in R@1 errors under each protocol, whether it exceeds the
seed spread, how much the choice on test adds to each method, how much test R@1 moves from epoch
to epoch after the warm-up), and the pooled one: every comparison's seeds taken as pairs (same
seed, with and without mixing), the mean paired change with a 95% t-interval, under each protocol,
and how much more the official protocol adds to Metrix than to no mixing.

    .venv/bin/python bench/protocols_summary.py bench/results/protocols-*

"Beyond the seed spread", as in bench/full_recipe_summary.py: the difference of the means exceeds
the larger of the two standard deviations over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from full_recipe_summary import cell, verdict
from scipy import stats

PROTOCOLS = (
    ("validation epoch (ours)", "recall_at_1", "map_at_r"),
    ("best test epoch (official)", "best_test_recall_at_1", "best_test_map_at_r"),
)
OURS, OFFICIAL = PROTOCOLS
#: The R@1 gain of Metrix (feature) the paper reports on CUB, per loss (../shared/METRIX.md's table).
PAPER_CUB_GAIN = {"contrastive": 2.7, "ms": 3.6, "pml-ms": 3.6, "pa": 1.5}


@dataclass
class Comparison:
    """One regime, data set and loss: its runs without mixing and with it, paired by seed."""

    regime: str
    data: str
    loss: str
    mixup: str
    base: list[dict]
    mixed: list[dict]

    def values(self, key: str) -> tuple[list[float], list[float]]:
        return [r[key] for r in self.base], [r[key] for r in self.mixed]

    def paired(self, key: str) -> list[float]:
        return [m[key] - b[key] for b, m in zip(self.base, self.mixed)]


def comparisons(folder: Path, baseline: str = "none") -> list[Comparison]:
    rows = json.loads((folder / "results.json").read_text())
    groups: dict[tuple, list] = {}
    for name, row in rows.items():
        if name != "floor" and "best_test_recall_at_1" in row:
            groups.setdefault((row["recipe"], row.get("tag", ""), row["loss"], row["mixup"]), []).append(row)
    found = []
    for (recipe, tag, loss, mixup), runs in sorted(groups.items()):
        base = groups.get((recipe, tag, loss, baseline))
        if mixup == baseline or not base:
            continue
        seeds = sorted({r["seed"] for r in base} & {r["seed"] for r in runs})
        data = folder.name.removeprefix(f"protocols-{recipe}-")
        found.append(
            Comparison(
                recipe + (f", {tag}" if tag else ""),
                data,
                loss,
                mixup,
                sorted((r for r in base if r["seed"] in seeds), key=lambda r: r["seed"]),
                sorted((r for r in runs if r["seed"] in seeds), key=lambda r: r["seed"]),
            )
        )
    return found


def error_change(base: list[float], mixed: list[float]) -> str:
    return f"{100 * ((100 - statistics.mean(mixed)) / (100 - statistics.mean(base)) - 1):+.1f}%"


def epoch_jitter(row: dict, warmup: int = 1) -> float:
    """Standard deviation of the epoch-to-epoch change in test R@1, after the warm-up epochs."""
    values = [c["test_recall_at_1"] for c in row["curve"] if c["epoch"] > warmup]
    steps = [b - a for a, b in zip(values, values[1:])]
    return statistics.stdev(steps) if len(steps) > 1 else 0.0


def decisive_row(c: Comparison) -> str:
    cells = []
    for _, r1_key, map_key in PROTOCOLS:
        b1, m1 = c.values(r1_key)
        bm, mm = c.values(map_key)
        cells += [cell(b1), cell(m1), error_change(b1, m1), verdict(b1, m1), cell(bm), cell(mm)]
    return f"| {c.regime} | {c.data} | {c.loss} | {c.mixup} | {len(c.base)} | " + " | ".join(cells) + " |"


def detail_rows(c: Comparison) -> list[str]:
    lift = [
        statistics.mean(r["best_test_recall_at_1"] - r["recall_at_1"] for r in group) for group in (c.base, c.mixed)
    ]
    jitter = [statistics.mean(epoch_jitter(r) for r in group) for group in (c.base, c.mixed)]
    lines = []
    for protocol, r1_key, map_key in PROTOCOLS:
        (b1, m1), (bm, mm) = c.values(r1_key), c.values(map_key)
        lines.append(
            f"| {c.regime}-{c.data} | {c.loss} | {c.mixup} | {len(c.base)} | {protocol} | {cell(b1)} | {cell(m1)} "
            f"| {error_change(b1, m1)} | {verdict(b1, m1)} | {cell(bm)} | {cell(mm)} | {verdict(bm, mm)} "
            f"| {lift[0]:+.2f} / {lift[1]:+.2f} | {jitter[0]:.2f} / {jitter[1]:.2f} |"
        )
    return lines


def interval(values: list[float]) -> tuple[float, float, float]:
    """The mean and its two-sided 95% Student-t interval."""
    mean = statistics.mean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def pooled_rows(found: list[Comparison]) -> list[str]:
    """Seed pairs pooled over comparisons: Metrix minus none under each protocol, and the official
    protocol's extra lift for Metrix ((best test - chosen) with mixing minus the same without)."""
    measures = [(f"{label}: R@1, Metrix - none", lambda c, k=key: c.paired(k)) for label, key, _ in PROTOCOLS]
    measures += [(f"{label}: MAP@R, Metrix - none", lambda c, k=key: c.paired(k)) for label, _, key in PROTOCOLS]
    measures.append(
        (
            "official lift for Metrix - for none, R@1",
            lambda c: [a - b for a, b in zip(c.paired(OFFICIAL[1]), c.paired(OURS[1]))],
        )
    )
    lines = []
    for scope, members in [("all", found)] + [
        (loss, [c for c in found if c.loss == loss]) for loss in sorted({c.loss for c in found})
    ]:
        for label, measure in measures:
            values = [v for c in members for v in measure(c)]
            if len(values) < 2:
                continue
            mean, low, high = interval(values)
            ahead = sum(v > 0 for v in values)
            lines.append(
                f"| {scope} | {label} | {len(values)} | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | {ahead} of {len(values)} |"
            )
    return lines


def single_run_rows(found: list[Comparison]) -> list[str]:
    """What one run of each method can show, as a table of single runs does: every seed of Metrix
    against every seed of no mixing (not independent, so no interval), per loss and protocol."""
    lines = []
    for loss in sorted({c.loss for c in found}):
        for protocol, key, _ in PROTOCOLS:
            gaps = [m - b for c in found if c.loss == loss for b in c.values(key)[0] for m in c.values(key)[1]]
            claim = PAPER_CUB_GAIN[loss]
            wins = sum(g >= claim for g in gaps)
            lines.append(
                f"| {loss} | {protocol} | {len(gaps)} | {max(gaps):+.2f} | {min(gaps):+.2f} | {claim:+} | {wins} of {len(gaps)} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="grid folders holding results.json")
    parser.add_argument("--baseline", default="none", help="the mixing the others are compared with")
    args = parser.parse_args()
    found = [
        c for folder in args.results if (folder / "results.json").is_file() for c in comparisons(folder, args.baseline)
    ]
    head = "R@1 none | R@1 Metrix | R@1 errors | R@1 verdict | MAP@R none | MAP@R Metrix"
    print(
        f"| regime | data | loss | mixing | seeds | {head.replace(' |', ', ours |')}, ours "
        f"| {head.replace(' |', ', official |')}, official |"
    )
    print("|---" * 17 + "|")
    print("\n".join(decisive_row(c) for c in found))
    print()
    print(
        "| regime | loss | mixing | seeds | epoch chosen by | R@1 none | R@1 mixing | R@1 errors | R@1 verdict "
        "| MAP@R none | MAP@R mixing | MAP@R verdict | test choice adds to R@1 (none / mixing) "
        "| test R@1 epoch-to-epoch sd (none / mixing) |"
    )
    print("|---" * 14 + "|")
    print("\n".join(line for c in found for line in detail_rows(c)))
    print()
    print("| losses | paired measure | pairs | mean | 95% interval | pairs above 0 |")
    print("|---" * 6 + "|")
    print("\n".join(pooled_rows(found)))
    print()
    print(
        "| loss | epoch chosen by | single-run pairings | largest R@1 gain | largest R@1 loss "
        "| the paper's CUB gain | pairings reaching it |"
    )
    print("|---" * 7 + "|")
    print("\n".join(single_run_rows(found)))


if __name__ == "__main__":
    main()
