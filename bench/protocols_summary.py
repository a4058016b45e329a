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
the larger of the two standard deviations over seeds. That is not a test, so a fourth table gives
every row's own statistics (issue 39), under ours (the epoch chosen on validation): the paired mean
change (Metrix minus none, same seed) in R@1 and MAP@R with its 95% Student-t interval; the
smallest true change the row could detect with 80% power (two-sided paired t-test at alpha 0.05,
given the row's paired sd and number of pairs), computed exactly from the noncentral t
distribution (scipy.stats.nct), no normal approximation; and a verdict that follows the interval:
"gain" (above 0), "loss" (below 0), or "no evidence either way, could not detect less than X".
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from full_recipe_summary import cell, verdict
from scipy import optimize, stats

PROTOCOLS = (
    ("validation epoch (ours)", "recall_at_1", "map_at_r"),
    ("best test epoch (official)", "best_test_recall_at_1", "best_test_map_at_r"),
)
OURS, OFFICIAL = PROTOCOLS
#: The per-row test: two-sided paired t-test at this level, and the power its detectable change needs.
ALPHA, POWER = 0.05, 0.80
#: Folder names: PREFIX-RECIPE-DATA (bench/protocols.sh) or PREFIX-RECIPE-DATA-IMAGESPERCLASS (bench/small_folders.sh).
GRID_PREFIXES = ("protocols-", "small-folders-")
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
        data = folder.name
        for prefix in GRID_PREFIXES:
            data = data.removeprefix(f"{prefix}{recipe}-")
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


def paired_power(change: float, sd: float, pairs: float, alpha: float = ALPHA) -> float:
    """The probability that a two-sided paired t-test at level `alpha` on `pairs` pairs rejects
    "no change" when the true mean change is `change` and the paired differences have standard
    deviation `sd`: exact, the statistic being noncentral t with pairs - 1 degrees of freedom and
    noncentrality change * sqrt(pairs) / sd."""
    df = pairs - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = change * pairs**0.5 / sd
    # P(T > c) + P(T < -c), the second written as P(T' > c) for T' = -T (noncentrality -shift):
    # scipy's nct.cdf far in the lower tail can return nan, its sf there does not.
    return float(stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift))


def detectable_change(sd: float, pairs: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean change (in the unit of sd) that the two-sided paired t-test on
    `pairs` pairs detects with probability `power`: the root of paired_power - power (power grows
    with the change, so the root is unique). 0 where the pairs do not vary, nan with one pair."""
    if pairs < 2:
        return float("nan")
    if sd == 0:
        return 0.0
    high = sd
    while paired_power(high, sd, pairs, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda change: paired_power(change, sd, pairs, alpha) - power, 0.0, high, xtol=1e-9))


@dataclass
class PairedRow:
    """One row's paired change (Metrix minus none, same seed) in one metric."""

    pairs: int
    mean: float
    low: float
    high: float
    sd: float
    detectable: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "gain"
        if self.high < 0:
            return "loss"
        return f"no evidence either way, could not detect less than {self.detectable:.2f}"


def paired_row(changes: list[float]) -> PairedRow:
    mean, low, high = interval(changes)
    sd = statistics.stdev(changes)
    return PairedRow(len(changes), mean, low, high, sd, detectable_change(sd, len(changes)))


#: The per-row statistics are taken at the epoch chosen on validation: test classes stay report-only.
ROW_METRICS = (("R@1", OURS[1]), ("MAP@R", OURS[2]))


def statistics_row(c: Comparison) -> str:
    """A row's paired changes under ours, each with its interval, detectable change and verdict."""
    cells = []
    for _, key in ROW_METRICS:
        row = paired_row(c.paired(key))
        cells += [
            f"{row.mean:+.2f} [{row.low:+.2f}, {row.high:+.2f}]",
            f"{row.sd:.2f}",
            f"{row.detectable:.2f}",
            row.verdict,
        ]
    base, mixed = c.values(OURS[1])
    return (
        f"| {c.regime} | {c.data} | {c.loss} | {c.mixup} | {len(c.base)} | {error_change(base, mixed)} | "
        + " | ".join(cells)
        + " |"
    )


STATISTICS_HEADER = (
    "| regime | data | loss | mixing | pairs | R@1 errors | R@1 change [95%] | R@1 paired sd | R@1 detectable "
    "| R@1 verdict | MAP@R change [95%] | MAP@R paired sd | MAP@R detectable | MAP@R verdict |\n" + "|---" * 14 + "|"
)


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


def print_statistics(found: list[Comparison]) -> None:
    """Every row's paired change, interval, detectable change (80% power) and verdict, under ours."""
    print(STATISTICS_HEADER)
    print("\n".join(statistics_row(c) for c in found if len(c.base) > 1))


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
    print_statistics(found)
    print()
    print(
        "| loss | epoch chosen by | single-run pairings | largest R@1 gain | largest R@1 loss "
        "| the paper's CUB gain | pairings reaching it |"
    )
    print("|---" * 7 + "|")
    print("\n".join(single_run_rows(found)))


if __name__ == "__main__":
    main()
