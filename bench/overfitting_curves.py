"""Plot retrieval on training classes against held-out (validation) classes per epoch, with and
without Metrix mixing, from the per-epoch curves a grid keeps in its results.json.

    .venv/bin/python bench/overfitting_curves.py bench/results/full_cpu-omniglot_small bench/results/full_cpu-cub100 \\
        --out docs/full_cpu-curves.png

One panel per results folder (and per tag, e.g. random batches); a line per mixing mode, the mean
over its seeds; solid = validation classes, dashed = the same number of training classes. A model
that over-fits its training classes shows the dashed line rising while the solid one stalls.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="grid folders holding results.json")
    parser.add_argument("--loss", default="ms")
    parser.add_argument("--metric", default="map_at_r", choices=("map_at_r", "recall_at_1"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    panels = {}
    for folder in args.results:
        for row in json.loads((folder / "results.json").read_text()).values():
            if row.get("loss") == args.loss and row.get("curve"):
                title = folder.name.split("-", 1)[-1] + (f", {row['tag']}" if row.get("tag") else "")
                panels.setdefault(title, {}).setdefault(row["mixup"], []).append(row["curve"])
    print(
        f"| set | mixing | seeds | {args.metric} training classes, epoch 1 -> last | validation classes, epoch 1 -> last "
        "| gain, training minus validation |\n|---|---|---|---|---|---|"
    )
    for title, by_mixup in panels.items():
        for mixup, curves in sorted(by_mixup.items()):
            first = {s: np.mean([c[0][f"{s}_{args.metric}"] for c in curves]) for s in ("train", "val")}
            last = {s: np.mean([c[-1][f"{s}_{args.metric}"] for c in curves]) for s in ("train", "val")}
            gap = (last["train"] - first["train"]) - (last["val"] - first["val"])
            print(
                f"| {title} | {mixup} | {len(curves)} | {first['train']:.1f} -> {last['train']:.1f} "
                f"| {first['val']:.1f} -> {last['val']:.1f} | {gap:+.1f} |"
            )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (title, by_mixup) in zip(axes[0], panels.items()):
        for color, (mixup, curves) in zip(("C0", "C3", "C2", "C1"), sorted(by_mixup.items())):
            length = min(len(c) for c in curves)
            epochs = [r["epoch"] for r in curves[0][:length]]
            for split, style in (("val", "-"), ("train", "--")):
                values = np.array([[r[f"{split}_{args.metric}"] for r in c[:length]] for c in curves])
                label = f"{mixup}, {'validation' if split == 'val' else 'training'} classes ({len(curves)} seeds)"
                ax.plot(epochs, values.mean(axis=0), style, color=color, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{args.metric.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
