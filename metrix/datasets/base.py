"""What every dataset loader returns: class-disjoint splits of (path, label) samples.

Labels are global class ids: `class_names[label]`. The training classes are split once more
into the classes the model trains on and a few held-out *training* classes for validation
(model selection never looks at test classes).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

#: Share of the training classes held out for validation unless told otherwise.
DEFAULT_VAL_FRACTION = 0.2


class DataError(ValueError):
    """Data that cannot be trained or evaluated on; the message is one line naming the problem."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class Split:
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def classes(self) -> list[int]:
        return sorted(set(self.labels))


@dataclass
class RetrievalData:
    """A dataset's class-disjoint splits.

    train: the classes the model trains on; val: held-out training classes (may be empty);
    test: the evaluation classes, each image a query against all the others, unless `gallery`
    is set (In-Shop), in which case `test` holds the queries and `gallery` the database.
    """

    name: str
    root: Path
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    gallery: Split | None = None
    labelled: bool = True  # False: train and val hold unlabelled images, each labelled by its index

    def describe(self) -> str:
        if self.labelled:
            parts = [f"{self.name}: {len(self.train)} train images / {len(self.train.classes)} classes"]
            if len(self.val):
                parts.append(f"{len(self.val)} val / {len(self.val.classes)}")
        else:
            parts = [f"{self.name}: {len(self.train)} unlabelled train images"]
            if len(self.val):
                parts.append(f"{len(self.val)} held out for view agreement")
        parts.append(f"{len(self.test)} test / {len(self.test.classes)}")
        if self.gallery is not None:
            parts.append(f"{len(self.gallery)} gallery")
        return ", ".join(parts)


def carve_validation(train: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """Hold out round(fraction * classes) training classes (at least 2 when fraction > 0),
    chosen with their own fixed seed so that the split does not move with the training seed."""
    if not 0 <= fraction < 1:
        raise DataError(f"the validation fraction must lie in [0, 1), got {fraction}")
    classes = train.classes
    if fraction == 0:
        return train, Split()
    count = max(2, round(fraction * len(classes)))
    if len(classes) - count < 2:
        raise DataError(
            f"cannot hold out {count} of {len(classes)} training classes for validation and keep 2 to "
            "train on; use fewer validation classes (--val-fraction) or more data"
        )
    held_out = set(random.Random(seed).sample(classes, count))
    return (
        Split([s for s in train.samples if s.label not in held_out]),
        Split([s for s in train.samples if s.label in held_out]),
    )


def keep_per_class(split: Split, count: int, seed: int) -> Split:
    """At most `count` images of each class (all of a class that has fewer), in the split's order.
    Each class draws its own with (seed, class id), so the same seed keeps the same images whatever
    the other classes, and the images kept for a smaller count are among those kept for a larger one."""
    if count < 1:
        raise DataError(f"cannot keep {count} images per class; keep at least 1")
    by_class: dict[int, list[int]] = {}
    for index, sample in enumerate(split.samples):
        by_class.setdefault(sample.label, []).append(index)
    kept: set[int] = set()
    for label, indices in by_class.items():
        random.Random(f"images-per-class:{seed}:{label}").shuffle(indices)
        kept.update(indices[:count])
    return Split([s for i, s in enumerate(split.samples) if i in kept])


def check_trainable(split: Split, what: str) -> None:
    """At least 2 classes, each with at least 2 images (a class of one has no positive pair)."""
    counts = Counter(split.labels)
    if len(counts) < 2:
        raise DataError(f"{what} has {len(counts)} class(es); metric learning needs at least 2")
    single = sorted(label for label, n in counts.items() if n < 2)
    if single:
        raise DataError(
            f"{what} has {len(single)} class(es) with a single image (class ids {single[:10]}); each class needs at least 2"
        )


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
