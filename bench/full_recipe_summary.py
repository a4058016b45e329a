"""Does Metrix help? For every loss with and without mixing in a grid's results.json, the mean
test R@1 and MAP@R over seeds, the relative change in R@1 errors, and whether the difference
exceeds the seed spread; the validation MAP@R (what choices are made on) beside them.

    .venv/bin/python bench/full_recipe_summary.py bench/results/full_cpu-omniglot_small bench/results/full_cpu-cub100

"Beyond the seed spread": the difference of the means exceeds the larger of the two standard
deviations (with one seed there is no spread, and the verdict says so).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summary(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def cell(values: list[float]) -> str:
    mean, sd = summary(values)
    return f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def verdict(base: list[float], mixed: list[float]) -> str:
    (mb, sb), (mm, sm) = summary(base), summary(mixed)
    if sb is None or sm is None:
        return "one seed: no spread"
    if abs(mm - mb) <= max(sb, sm):
        return "within"
    return "better beyond" if mm > mb else "worse beyond"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="grid folders holding results.json")
    parser.add_argument("--baseline", default="none", help="the mixing the others are compared with")
    args = parser.parse_args()
    print(
        "| set, settings | loss | mixing | seeds | test R@1 | test MAP@R | R@1 errors vs none | R@1, MAP@R vs none "
        "| val MAP@R |\n|---|---|---|---|---|---|---|---|---|"
    )
    for folder in args.results:
        rows = json.loads((folder / "results.json").read_text())
        groups: dict[tuple, list] = {}
        for name, row in rows.items():
            if name != "floor":
                groups.setdefault((row.get("tag", ""), row["loss"], row["mixup"]), []).append(row)
        base_of = {(tag, loss): runs for (tag, loss, mixup), runs in groups.items() if mixup == args.baseline}
        for (tag, loss, mixup), runs in sorted(
            groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2] != args.baseline)
        ):
            settings = ", ".join(f"{k}={v}" for k, v in runs[0].get("settings", {}).items()) or "recipe"
            r1, mapr = [r["recall_at_1"] for r in runs], [r["map_at_r"] for r in runs]
            base = base_of.get((tag, loss)) or base_of.get(("", loss))
            compare = errors = "-"
            if mixup != args.baseline and base:
                b1, bm = [r["recall_at_1"] for r in base], [r["map_at_r"] for r in base]
                errors = f"{100 * ((100 - statistics.mean(r1)) / (100 - statistics.mean(b1)) - 1):+.1f}%"
                compare = f"{verdict(b1, r1)}, {verdict(bm, mapr)}"
            print(
                f"| {folder.name.split('-', 1)[-1]}, {settings} | {loss} | {mixup} | {len(runs)} | {cell(r1)} | {cell(mapr)} "
                f"| {errors} | {compare} | {cell([r['val_map_at_r'] for r in runs])} |"
            )


if __name__ == "__main__":
    main()
