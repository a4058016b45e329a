"""Small, real training setups shared by the trainer tests."""

import json
import subprocess
import sys
from pathlib import Path

from metrix.datasets.synthetic import generate_synthetic

TINY = dict(
    recipe="full",
    backbone="efficientnet_lite0",
    image_size=32,
    embedding_size=32,
    epochs=3,
    batch_size=8,
    samples_per_class=2,
    warmup_epochs=1,
    num_workers=2,
    val_fraction=0.2,
)


def tiny_dataset(root: Path) -> Path:
    """20 synthetic classes x 12 images at 32 px: 10 train classes (2 held out for validation)."""
    return generate_synthetic(root, num_classes=20, images_per_class=12, image_size=32, seed=0, workers=1)


def write_config(path: Path, **overrides) -> Path:
    path.write_text(json.dumps({**TINY, **overrides}))
    return path


def metrix_cli(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metrix", *map(str, args)], capture_output=True, text=True, check=check, **kwargs
    )
