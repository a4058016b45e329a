"""Any ImageFolder (one sub-folder per class), split into disjoint train and test classes;
and `load_data`, which picks between an ImageFolder and a named benchmark."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from .base import (
    DEFAULT_VAL_FRACTION,
    DataError,
    RetrievalData,
    Sample,
    Split,
    carve_validation,
    check_trainable,
    is_image_file,
)
from .benchmarks import load_benchmark


def _images(folder: Path) -> list[Path]:
    """Image files anywhere below `folder`, sorted; hidden entries skipped, symlinked
    directories not followed (a link back up would loop forever)."""
    found = []
    for directory, subdirectories, files in os.walk(folder, followlinks=False):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found += [Path(directory, f) for f in files if not f.startswith(".") and is_image_file(Path(directory, f))]
    return sorted(found)


def _class_names(given: int | str | Sequence[str], names: list[str], root: Path) -> list[str]:
    """The training classes `train_classes` asks for: the first N, or the named ones."""
    if isinstance(given, str) and given.strip().isdigit():
        given = int(given)
    if isinstance(given, int):
        if not 0 < given < len(names):
            raise DataError(
                f"train_classes={given} but {root} has {len(names)} classes with images; give 0 < N < {len(names)}"
            )
        return names[:given]
    if isinstance(given, str):
        given = given.split(",")
    return _known([name.strip() for name in given if name.strip()], names, root, "train_classes")


def _known(asked: list[str], names: list[str], root: Path, source: str) -> list[str]:
    unknown = [name for name in asked if name not in names]
    if unknown:
        raise DataError(
            f"{source} names {len(unknown)} class(es) that are not class folders with images in {root}: {unknown[:10]}"
        )
    return asked


def _read_split_file(path: str | Path, names: list[str], root: Path) -> tuple[list[str], list[str] | None]:
    path = Path(path).expanduser()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"cannot read the split file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"the split file {path} is not valid JSON: {error}") from None

    def names_under(key: str) -> list[str] | None:
        value = content.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"the split file {path}: '{key}' must be a list of class folder names")
        return _known(value, names, root, f"the split file {path}")

    if not isinstance(content, dict) or "train" not in content:
        raise DataError(f'the split file {path} must hold a JSON object {{"train": [...], "test": [...]}}')
    train, test = names_under("train"), names_under("test")
    if test is not None:
        both = sorted(set(train) & set(test))
        if both:
            raise DataError(f"the split file {path} puts {len(both)} class(es) in both train and test: {both[:10]}")
    return train, test


def load_image_folder(
    root: str | Path,
    train_classes: int | str | Sequence[str] | None = None,
    split_file: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> RetrievalData:
    """Classes are the sub-folders of `root` in name order; by default the first half
    (C // 2) train and the rest test."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    if train_classes is not None and split_file is not None:
        raise DataError("give train_classes or a split file, not both")

    images: dict[str, list[Path]] = {}
    empty = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = _images(folder)
        if found:
            images[folder.name] = found
        else:
            empty.append(folder.name)
    if empty:
        warnings.warn(f"skipped {len(empty)} class folder(s) without images in {root}: {empty[:10]}", stacklevel=2)
    names = list(images)
    if len(names) < 2:
        raise DataError(
            f"image folder {root} has {len(names)} class folder(s) with images; need at least 2 (one sub-folder per class)"
        )
    single = [name for name in names if len(images[name]) == 1]
    if single:
        raise DataError(
            f"image folder {root} has {len(single)} class folder(s) with a single image (each needs at least 2): {single[:10]}"
        )

    test_names = None
    if split_file is not None:
        train_names, test_names = _read_split_file(split_file, names, root)
    elif train_classes is not None:
        train_names = _class_names(train_classes, names, root)
    else:
        train_names = names[: len(names) // 2]
    if test_names is None:
        test_names = [name for name in names if name not in set(train_names)]

    def split(chosen: list[str]) -> Split:
        chosen = set(chosen)
        return Split(
            [Sample(path, label) for label, name in enumerate(names) if name in chosen for path in images[name]]
        )

    train, test = split(train_names), split(test_names)
    check_trainable(train, f"the training split of {root}")
    if len(test.classes) < 2:
        raise DataError(f"the test split of {root} has {len(test.classes)} class(es); retrieval needs at least 2")
    train, val = carve_validation(train, val_fraction)
    return RetrievalData("folder", root, names, train, val, test)


def load_data(
    data: str | Path | None = None,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    train_classes: int | str | Sequence[str] | None = None,
    split_file: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> RetrievalData:
    """An ImageFolder (`data`) or a benchmark (`dataset` read from `data_root`); exactly one."""
    if data is None and dataset is None:
        raise DataError("give --data DIR or --dataset NAME --data-root DIR")
    if data is not None and dataset is not None:
        raise DataError("give either --data DIR or --dataset NAME, not both")
    if data is not None:
        if data_root is not None:
            raise DataError("--data-root goes with --dataset NAME; with --data DIR give the folder alone")
        return load_image_folder(data, train_classes, split_file, val_fraction)
    if data_root is None:
        raise DataError(f"--dataset {dataset} needs --data-root DIR, the folder it was downloaded to")
    if train_classes is not None or split_file is not None:
        raise DataError(
            f"--dataset {dataset} uses its official split; --train-classes and --split-file apply only to --data DIR"
        )
    return load_benchmark(dataset, data_root, val_fraction)
