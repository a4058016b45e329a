"""Small folders, long enough to over-fit (issue 39, arm 1): the grid of bench/small_folders.sh.

Two tables and, with --curves, a picture:

- over-fitting: per folder and mixing, where validation MAP@R peaks (the chosen epoch) in the
  schedule, how far it falls from that peak by the last epoch, and the gap between the training
  classes' MAP@R and the validation classes' at the last epoch: does no mixing over-fit, and does
  mixing change that?
- every row's paired statistics, as bench/protocols_summary.py computes them (shared code): the
  paired change in R@1 and MAP@R at the validation-chosen epoch with its 95% t-interval, the
  smallest change the row could detect with 80% power, and the verdict.

    .venv/bin/python bench/small_folders_summary.py bench/results/small-folders-* [--curves docs/small-folders-curves.png]

Test classes are reported, never used to choose anything.

The grid also asks this script whether a schedule is long enough (--check-schedule FOLDER: seed 0
without mixing must peak in validation MAP@R by PEAK_BY of the schedule and fall from that peak by
at least MIN_FALL by its last epoch, or have converged: its last quarter moves it by less than
MIN_FALL; exit status 0 if so, 1 if not) and which schedule a folder
was trained with (--epochs FOLDER).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from protocols_summary import comparisons, print_statistics

#: A schedule is long enough when no mixing's validation MAP@R peaks by this share of the epochs...
PEAK_BY = 0.75
#: ...and has fallen from that peak by at least this much (MAP@R points) at the last epoch: about
#: twice the epoch-to-epoch jitter of the pilots' validation MAP@R.
MIN_FALL = 0.5


def overfitting(row: dict) -> dict:
    """One run's curve: the chosen (best validation MAP@R) epoch, the fall from that peak to the
    last epoch, and the training-minus-validation MAP@R gap at the last epoch."""
    curve = row["curve"]
    last = curve[-1]
    peak = max(curve, key=lambda c: c["val_map_at_r"])
    return {
        "epochs": last["epoch"],
        "best_epoch": peak["epoch"],
        "fall": peak["val_map_at_r"] - last["val_map_at_r"],
        "gap": last["train_map_at_r"] - last["val_map_at_r"] if "train_map_at_r" in last else float("nan"),
    }


def schedule_check(folder: Path) -> tuple[bool, str]:
    """Is seed 0 without mixing trained long enough: over-fitting (a peak well inside the schedule,
    then a fall) or converged (its last quarter moves validation MAP@R by less than MIN_FALL, up
    or down from the peak)? A converged run that does not fall does not over-fit at this length:
    a longer cosine only lengthens its plateau (issue 39: cub100 at 5 per class, 45 epochs)."""
    row = json.loads((folder / "results.json").read_text())["ms-none-s0"]
    seen = overfitting(row)
    curve = row["curve"]
    quarter = curve[int(PEAK_BY * len(curve)) - 1]["val_map_at_r"]
    late_rise = curve[-1]["val_map_at_r"] - quarter
    overfits = seen["best_epoch"] <= PEAK_BY * seen["epochs"] and seen["fall"] >= MIN_FALL
    converged = abs(late_rise) < MIN_FALL and seen["fall"] < MIN_FALL
    verdict = (
        "long enough: over-fits"
        if overfits
        else "long enough: converged without over-fitting"
        if converged
        else f"too short (needs a peak by {PEAK_BY:.0%} of it and a fall of {MIN_FALL}, or a last quarter "
        f"that moves it less than {MIN_FALL})"
    )
    return overfits or converged, (
        f"{folder.name}, seed 0 without mixing: validation MAP@R peaks at epoch {seen['best_epoch']} of "
        f"{seen['epochs']}, falls {seen['fall']:.2f} by the last and moves {late_rise:+.2f} over the last "
        f"quarter: {verdict}"
    )


def trained_epochs(folder: Path) -> int:
    """The schedule a grid folder's runs train with: the settings recipe_grid wrote for its first
    run (seed 0 without mixing) before training it, so also while that run is unfinished; in a
    fresh checkout, which holds only results.json, the settings recorded with that run."""
    settings = folder / "ms-none-s0.json"
    if settings.is_file():
        return json.loads(settings.read_text())["epochs"]
    return json.loads((folder / "results.json").read_text())["ms-none-s0"]["settings"]["epochs"]


def overfitting_rows(folder: Path) -> list[str]:
    rows = json.loads((folder / "results.json").read_text())
    groups: dict[tuple[str, str], list[dict]] = {}
    for name, row in rows.items():
        if name != "floor" and row.get("curve"):
            groups.setdefault((row["loss"], row["mixup"]), []).append(overfitting(row))
    lines = []
    for (loss, mixup), runs in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] != "none")):
        best = sorted(r["best_epoch"] for r in runs)
        falls = [r["fall"] for r in runs]
        lines.append(
            f"| {folder.name.removeprefix('small-folders-')} | {loss} | {mixup} | {len(runs)} | {runs[0]['epochs']} "
            f"| {statistics.median(best):g} ({best[0]}-{best[-1]}) | {statistics.mean(falls):.2f} "
            f"| {sum(f > 0 for f in falls)} of {len(falls)} | {statistics.mean(r['gap'] for r in runs):+.2f} |"
        )
    return lines


def plot_curves(folders: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"none": "C0", "feature": "C3", "embed": "C2", "input": "C1"}
    fig, axes = plt.subplots(1, len(folders), figsize=(5 * len(folders), 4), squeeze=False)
    for ax, folder in zip(axes.flat, folders):
        for name, row in json.loads((folder / "results.json").read_text()).items():
            if name == "floor" or not row.get("curve"):
                continue
            epochs = [c["epoch"] for c in row["curve"]]
            colour = colours.get(row["mixup"], "C7")
            ax.plot(epochs, [c["val_map_at_r"] for c in row["curve"]], color=colour, alpha=0.7)
            if "train_map_at_r" in row["curve"][0]:
                ax.plot(epochs, [c["train_map_at_r"] for c in row["curve"]], color=colour, alpha=0.4, linestyle=":")
            ax.plot(row["best_epoch"], row["val_map_at_r"], "o", color=colour, markersize=4)
        ax.set_title(folder.name.removeprefix("small-folders-"), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("MAP@R (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(
        "validation MAP@R (solid), training-class MAP@R (dotted; its classes have fewer images, so a\n"
        "higher level is not over-fitting by itself: read the trends); blue: none, red: feature; o: chosen epoch",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="grid folders holding results.json")
    parser.add_argument("--curves", type=Path, help="also draw the validation and training curves here (PNG)")
    parser.add_argument("--check-schedule", action="store_true", help="is the folder's schedule long enough?")
    parser.add_argument("--epochs", action="store_true", help="print the folder's schedule (epochs)")
    args = parser.parse_args()
    if args.check_schedule:
        ok, why = schedule_check(args.results[0])
        print(why)
        raise SystemExit(0 if ok else 1)
    if args.epochs:
        print(trained_epochs(args.results[0]))
        return
    folders = [folder for folder in args.results if (folder / "results.json").is_file()]
    print(
        "| recipe-set-images per class | loss | mixing | runs | epochs | chosen epoch, median (range) "
        "| val MAP@R fall from peak to last epoch | runs that fall | train - val MAP@R, last epoch |"
    )
    print("|---" * 9 + "|")
    print("\n".join(line for folder in folders for line in overfitting_rows(folder)))
    print()
    print_statistics([c for folder in folders for c in comparisons(folder)])
    if args.curves:
        plot_curves(folders, args.curves)


if __name__ == "__main__":
    main()
