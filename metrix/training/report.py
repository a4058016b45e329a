"""What a run writes besides checkpoints: metrics.jsonl (one line per epoch) and curves.png."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from metrix.machine import cpu_name

METRICS_FILE, CURVES_FILE = "metrics.jsonl", "curves.png"


def append_metrics(run_dir: Path, record: dict | None, keep_epochs_below: int | None = None) -> None:
    """Append one epoch's record; with keep_epochs_below, first drop the lines of later epochs
    (a resumed run repeats them)."""
    path = run_dir / METRICS_FILE
    if keep_epochs_below is not None and path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] <= keep_epochs_below]
        path.write_text("".join(line + "\n" for line in kept))
    if record is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_curves(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "clean", "mixed"):
        left.plot(epochs, [r[key] for r in records], marker="o", label=key)
    left.set_xlabel("epoch")
    left.set_title("training loss")
    left.legend()
    for split, style in (("val", "-"), ("train", "--")):
        for key, name, color in (("recall_at_1", "R@1", "C0"), ("map_at_r", "MAP@R", "C1")):
            if records and f"{split}_{key}" in records[0]:
                right.plot(
                    epochs,
                    [r[f"{split}_{key}"] for r in records],
                    style,
                    marker="o",
                    color=color,
                    label=f"{name} {'validation' if split == 'val' else 'training'} classes",
                )
    right.set_xlabel("epoch")
    right.set_title("retrieval on held-out training classes (and on training classes), %")
    right.legend()
    fig.tight_layout()
    path = run_dir / CURVES_FILE
    tmp = path.with_name(".curves.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def versions() -> dict:
    out = {"python": platform.python_version(), "cpu": cpu_name()}
    for name in ("metrix", "torch", "torchvision", "timm", "numpy", "faiss-cpu"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
