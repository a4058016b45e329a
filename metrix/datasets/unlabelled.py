"""Training data without labels (`metrix train --labels none|instances|clusters`).

The images that train: every image below the folder, flat or nested (sub-folders are not
classes), or, with --train-classes / --split-file / --dataset, the images of those training
classes with their labels dropped; the other classes then stay the labelled test split, so a
run can be measured on unseen classes exactly like a labelled one. A fixed share of the images
(not of classes: there are none) is held out to validate on, by the agreement of augmented
views (metrix.training.view_agreement). Each sample's label is its index in its split: its instance id.
"""

from __future__ import annotations

import random
from pathlib import Path

from .base import DEFAULT_VAL_FRACTION, DataError, RetrievalData, Sample, Split
from .folder import _images, load_data

#: The fewest images training without labels accepts (two instance "classes" per batch at least).
MIN_IMAGES = 4


def load_unlabelled(
    data: str | Path | None = None,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    train_classes: str | None = None,
    split_file: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> RetrievalData:
    if dataset is not None or train_classes is not None or split_file is not None:
        labelled = load_data(data, dataset, data_root, train_classes, split_file, val_fraction=0)
        pool, test, names, root = (
            [s.path for s in labelled.train.samples],
            labelled.test,
            labelled.class_names,
            labelled.root,
        )
        name = labelled.name
    else:
        if data is None:
            raise DataError("training without labels needs --data DIR (a folder of images) or --dataset NAME")
        root = Path(data).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a directory")
        pool, test, names, name = _images(root), Split(), [], "folder"
    if len(pool) < MIN_IMAGES:
        raise DataError(f"{root} has {len(pool)} image(s); training without labels needs at least {MIN_IMAGES}")
    train, val = _hold_out_images(sorted(pool), val_fraction)
    return RetrievalData(name, root, names, train, val, test, labelled=False)


def _hold_out_images(paths: list[Path], fraction: float) -> tuple[Split, Split]:
    """round(fraction * N) images (at least 2 when fraction > 0), chosen with a fixed seed so
    the split does not move with the training seed."""
    if not 0 <= fraction < 1:
        raise DataError(f"the validation fraction must lie in [0, 1), got {fraction}")
    count = 0 if fraction == 0 else max(2, round(fraction * len(paths)))
    if len(paths) - count < MIN_IMAGES:
        raise DataError(
            f"holding out {count} of {len(paths)} images for validation leaves fewer than {MIN_IMAGES} "
            "to train on; lower --val-fraction or add images"
        )
    held_out = set(random.Random(0).sample(range(len(paths)), count))
    kept = [p for i, p in enumerate(paths) if i not in held_out]
    validation = [p for i, p in enumerate(paths) if i in held_out]
    return (Split([Sample(p, i) for i, p in enumerate(kept)]), Split([Sample(p, i) for i, p in enumerate(validation)]))
