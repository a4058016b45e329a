"""What each protocol picks (issue 25): test R@1 at every epoch of every run, none against mixing,
with the epoch chosen on the validation classes (circle, ours) and the epoch with the best test
R@1 (star, the official code's) marked on each line.

    .venv/bin/python bench/protocols_curves.py bench/results/protocols-* --out docs/protocols-curves.png

One panel per grid folder and loss; one line per run (colour: mixing; the seeds share it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"none": "C0", "feature": "C3", "embed": "C2", "input": "C1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="grid folders holding results.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    panels: dict[str, list[dict]] = {}
    for folder in args.results:
        for row in json.loads((folder / "results.json").read_text()).values():
            if row.get("curve") and "best_test_epoch" in row:
                panels.setdefault(f"{folder.name.removeprefix('protocols-')}, {row['loss']}", []).append(row)
    columns = min(len(panels), 3)
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(6 * columns, 4.2 * lines), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, rows) in zip(axes.flat, sorted(panels.items())):
        for row in sorted(rows, key=lambda r: (r["mixup"], r["seed"])):
            epochs = [c["epoch"] for c in row["curve"]]
            values = [c["test_recall_at_1"] for c in row["curve"]]
            colour = COLOURS.get(row["mixup"], "C7")
            ax.plot(epochs, values, color=colour, alpha=0.8, label=f"{row['mixup']}, seed {row['seed']}")
            for epoch, marker in ((row["best_epoch"], "o"), (row["best_test_epoch"], "*")):
                ax.plot(epoch, values[epochs.index(epoch)], marker, color=colour, markersize=9 if marker == "*" else 6)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test R@1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("test R@1 per epoch; o: the epoch chosen on validation (ours), *: the best on test (official)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
