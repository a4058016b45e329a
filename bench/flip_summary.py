"""The table of issue 31: flips against no flips (bench/flip_grid.sh), per set, at the epoch chosen
on the validation classes, with what the flip check (bench/flip_check.py) picks on the set.

    .venv/bin/python bench/flip_summary.py bench/results/flip-full-cpu-* [--check bench/results/flip_check.json]

"Verdict" compares the difference of the means with the larger seed standard deviation; seeds
are paired (the same seed with and without flips), and only seeds run both ways are counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = ("recall_at_1", "map_at_r")


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def verdict(on: list[float], off: list[float]) -> str:
    if len(on) < 2:
        return "one seed: no spread"
    gap = statistics.mean(off) - statistics.mean(on)
    noise = max(statistics.stdev(on), statistics.stdev(off))
    if abs(gap) <= noise:
        return "within"
    return "no flips better" if gap > 0 else "flips better"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--check", type=Path, default=Path(__file__).parent / "results" / "flip_check.json")
    args = parser.parse_args()
    checks = json.loads(args.check.read_text())["rows"] if args.check.is_file() else []
    print(
        "| set | seeds | R@1 flips | R@1 no flips | R@1 verdict | MAP@R flips | MAP@R no flips | MAP@R verdict "
        "| the check picks (excess, p) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        results = json.loads((folder / "results.json").read_text())
        name = folder.name.removeprefix("flip-full-cpu-")
        by_seed = {
            seed: (results.get(f"flip-true-ms-none-s{seed}"), results.get(f"flip-false-ms-none-s{seed}"))
            for seed in range(10)
        }
        pairs = [(on, off) for on, off in by_seed.values() if on and off]
        if not pairs:
            continue
        cells = []
        for metric in METRICS:
            on, off = [p[0][metric] for p in pairs], [p[1][metric] for p in pairs]
            cells += [spread(on), spread(off), verdict(on, off)]
        check = next(
            (c for c in checks if c["set"] == name and c["variant"] == "as is" and c["recipe"] == "full-cpu"), None
        )
        picks = (
            f"{'flips' if check['flip'] else 'no flips'} ({check['excess']:+.1%}, {check['p_value']:.2g})"
            if check
            else "-"
        )
        print(f"| {name} | {len(pairs)} | " + " | ".join(cells) + f" | {picks} |")


if __name__ == "__main__":
    main()
