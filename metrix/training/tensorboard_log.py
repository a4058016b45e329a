"""`metrix train --log tensorboard`: each epoch's record (metrics.jsonl's line) also as TensorBoard
scalars in RUN/tensorboard, step = epoch, written by torch's SummaryWriter (the `tensorboard`
extra). `tensorboard --logdir runs` then shows every run's losses, learning rate and validation
metrics side by side."""

from __future__ import annotations

import importlib.util
from pathlib import Path

LOG_DIR = "tensorboard"
#: Record keys shown under one heading each; the rest go under "epoch/".
GROUPS = {"val": "validation", "test": "test (reported only)", "train": "training classes", "probe": "probe"}
LOSSES = ("loss", "clean", "mixed")


def tensorboard_missing() -> str | None:
    """Why --log tensorboard cannot run here, or None."""
    if importlib.util.find_spec("tensorboard") is None:
        return "--log tensorboard needs the tensorboard package: pip install 'metrix[tensorboard]'"
    return None


def tag(key: str) -> str:
    """A record key -> its TensorBoard tag, e.g. val_map_at_r -> validation/map_at_r."""
    if key in LOSSES:
        return f"loss/{key}"
    prefix, _, rest = key.partition("_")
    if prefix in GROUPS and rest:
        return f"{GROUPS[prefix]}/{rest}"
    return f"epoch/{key}"


class TensorBoardLog:
    """Opened once per training process; on resume, events at and after the first epoch to be
    repeated are purged, as metrics.jsonl drops its later lines."""

    def __init__(self, run_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / LOG_DIR), purge_step=first_epoch + 1 if first_epoch else None)

    def write(self, record: dict) -> None:
        step = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(key), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
