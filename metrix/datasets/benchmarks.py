"""The paper's four benchmarks, read from their original download layouts, with the official
class-disjoint splits of the metric-learning protocol.

CUB-200-2011: classes 1-100 train, 101-200 test. Cars196: classes 1-98 train, 99-196 test.
Stanford Online Products: Ebay_train.txt / Ebay_test.txt. In-Shop: list_eval_partition.txt
(train items to train; query and gallery images of the test items to evaluate).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import DEFAULT_VAL_FRACTION, DataError, RetrievalData, Sample, Split, carve_validation

CUB_TRAIN_CLASSES = 100
CARS_TRAIN_CLASSES = 98


def _root(title: str, root: str | Path) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"{title} root {path} does not exist or is not a directory")
    return path


def _require(title: str, root: Path, relative: str, base: Path | None = None) -> Path:
    """The annotation file `relative` under `base` (default root), named relative to root when missing."""
    path = (base or root) / relative
    if not path.is_file():
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        raise DataError(f"{title} root {root} is missing {shown.as_posix()}")
    return path


def _rows(title: str, path: Path, fields: int, skip: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line after the first `skip` lines."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if number <= skip or not line.strip():
                continue
            parts = line.strip().split(maxsplit=fields - 1)  # the last field (a path or name) may hold spaces
            if len(parts) != fields:
                raise DataError(
                    f"{title}: {path} line {number} has {len(parts)} fields, expected {fields}: {line.strip()!r}"
                )
            yield number, parts


def _int(title: str, path: Path, number: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{title}: {path} line {number} has {text!r} where a number belongs") from None


def _drop_missing(title: str, splits: dict[str, list[Sample]]) -> dict[str, Split]:
    """Leave out images that the annotations list but the disk lacks, with one warning for all;
    a split left with no images is an error."""
    missing: list[Path] = []
    kept = {name: Split() for name in splits}
    for name, samples in splits.items():
        for sample in samples:
            if sample.path.is_file():
                kept[name].samples.append(sample)
            else:
                missing.append(sample.path)
    if missing:
        warnings.warn(
            f"{title}: skipped {len(missing)} listed image(s) missing on disk, the first {missing[0]}", stacklevel=3
        )
    for name, split in kept.items():
        if not split.samples:
            raise DataError(f"{title}: the {name} split has no images (none listed, or none found on disk)")
    return kept


def _finish(
    name: str, root: Path, class_names: list[str], splits: dict[str, Split], val_fraction: float
) -> RetrievalData:
    train, val = carve_validation(splits["train"], val_fraction)
    return RetrievalData(name, root, class_names, train, val, splits["test"], splits.get("gallery"))


def load_cub(root: str | Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> RetrievalData:
    title = "CUB-200-2011"
    root = _root(title, root)
    # Accept the folder holding CUB_200_2011/ as well as CUB_200_2011/ itself.
    inside = root.name == "CUB_200_2011" or (root / "images.txt").is_file()
    base = root if inside else root / "CUB_200_2011"
    images = _require(title, root, "images.txt", base)
    labels = _require(title, root, "image_class_labels.txt", base)
    classes = _require(title, root, "classes.txt", base)

    class_names: dict[int, str] = {}
    for number, (class_id, name) in _rows(title, classes, 2):
        class_names[_int(title, classes, number, class_id)] = name
    paths = {image_id: path for _, (image_id, path) in _rows(title, images, 2)}

    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for number, (image_id, class_text) in _rows(title, labels, 2):
        class_id = _int(title, labels, number, class_text)
        if image_id not in paths:
            raise DataError(f"{title}: {labels} line {number} names image {image_id}, which images.txt lacks")
        if class_id not in class_names:
            raise DataError(f"{title}: {labels} line {number} names class {class_id}, which classes.txt lacks")
        which = "train" if class_id <= CUB_TRAIN_CLASSES else "test"
        splits[which].append(Sample(base / "images" / paths[image_id], class_id - 1))

    if not class_names:
        raise DataError(f"{title}: {classes} lists no classes")
    names = [class_names.get(i, str(i)) for i in range(1, max(class_names) + 1)]
    return _finish("cub", root, names, _drop_missing(title, splits), val_fraction)


def _mat_text(value) -> str:
    """A MATLAB string as loadmat returns it, however deeply wrapped in arrays."""
    import numpy as np

    while isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.ravel()[0]
    return str(value)


def load_cars(root: str | Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> RetrievalData:
    title = "Cars196"
    root = _root(title, root)
    mat_path = _require(title, root, "cars_annos.mat")
    try:
        import numpy as np
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{title}: reading {mat_path} needs scipy (pip install scipy)") from None
    try:
        mat = loadmat(mat_path, squeeze_me=True)
    except Exception as error:  # scipy raises several types for a damaged file
        raise DataError(f"{title}: cannot read {mat_path}: {error}") from None
    for key in ("annotations", "class_names"):
        if key not in mat:
            raise DataError(f"{title}: {mat_path} has no '{key}' variable")
    annotations = np.atleast_1d(mat["annotations"])
    if annotations.dtype.names is None or not {"relative_im_path", "class"} <= set(annotations.dtype.names):
        raise DataError(f"{title}: {mat_path} annotations lack the fields relative_im_path and class")
    class_names = [_mat_text(name) for name in np.atleast_1d(mat["class_names"])]

    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for annotation in annotations:
        class_id = int(np.asarray(annotation["class"]).item())
        if not 1 <= class_id <= len(class_names):
            raise DataError(f"{title}: {mat_path} has class {class_id} outside 1..{len(class_names)}")
        # The protocol splits by class and ignores the file's own `test` flag.
        which = "train" if class_id <= CARS_TRAIN_CLASSES else "test"
        splits[which].append(Sample(root / _mat_text(annotation["relative_im_path"]), class_id - 1))
    return _finish("cars", root, class_names, _drop_missing(title, splits), val_fraction)


def load_sop(root: str | Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> RetrievalData:
    title = "Stanford Online Products"
    root = _root(title, root)
    files = {"train": _require(title, root, "Ebay_train.txt"), "test": _require(title, root, "Ebay_test.txt")}

    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    names: dict[int, str] = {}
    for which, path in files.items():
        for number, (_, class_text, _, relative) in _rows(title, path, 4, skip=1):
            class_id = _int(title, path, number, class_text)
            if class_id < 1:
                raise DataError(f"{title}: {path} line {number} has class id {class_id}; ids start at 1")
            super_class = relative.split("/")[0]
            names[class_id] = f"{super_class}/{class_id}"
            splits[which].append(Sample(root / relative, class_id - 1))
    if not names:
        raise DataError(f"{title}: {root} has no rows in Ebay_train.txt or Ebay_test.txt")

    class_names = [names.get(i, str(i)) for i in range(1, max(names) + 1)]
    return _finish("sop", root, class_names, _drop_missing(title, splits), val_fraction)


def load_inshop(root: str | Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> RetrievalData:
    title = "In-Shop Clothes Retrieval"
    root = _root(title, root)
    relative = "list_eval_partition.txt"
    if not (root / relative).is_file() and (root / "Eval" / relative).is_file():
        relative = "Eval/list_eval_partition.txt"  # where the original download keeps it
    partition = _require(title, root, relative)
    # The images live under root/img/..., or root/Img/img/... as the original zip unpacks.
    image_base = root / "Img" if not (root / "img").is_dir() and (root / "Img").is_dir() else root

    rows = []
    for number, (image_name, item_id, status) in _rows(title, partition, 3, skip=2):
        if status not in ("train", "query", "gallery"):
            raise DataError(f"{title}: {partition} line {number} has status {status!r}, not train, query or gallery")
        rows.append((image_name, item_id, status))
    class_names = sorted({item_id for _, item_id, _ in rows})
    label = {item_id: i for i, item_id in enumerate(class_names)}

    splits: dict[str, list[Sample]] = {"train": [], "test": [], "gallery": []}
    split_of = {"train": "train", "query": "test", "gallery": "gallery"}
    for image_name, item_id, status in rows:
        splits[split_of[status]].append(Sample(image_base / image_name, label[item_id]))
    return _finish("inshop", root, class_names, _drop_missing(title, splits), val_fraction)


BENCHMARKS: dict[str, Callable[..., RetrievalData]] = {
    "cub": load_cub,
    "cars": load_cars,
    "sop": load_sop,
    "inshop": load_inshop,
}


def load_benchmark(name: str, root: str | Path, val_fraction: float = DEFAULT_VAL_FRACTION) -> RetrievalData:
    loader = BENCHMARKS.get(name.lower())
    if loader is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(BENCHMARKS)}")
    return loader(root, val_fraction)
