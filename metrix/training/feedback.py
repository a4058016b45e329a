"""Marks as training data: `metrix train --data GALLERY --feedback INDEX` (issue 40, docs/feedback.md).

A served index keeps the queries it was asked with their right / wrong marks (index/kept_queries.py).
Each marked query and the gallery images marked right for it show one thing; queries that share a
right-marked image show the same thing, so they are joined (union-find) into one class. Every
other class is a negative of it, as with folder labels; a wrong mark says the same of an image in
another class, and an image only ever marked wrong, in no class, is not trained on (a class of
one has no positive; its mark still counts when a new model is checked, index/upgrade_check.py).
Region queries are left out (their marks judge a part of the picture), as are marks on files no
longer in the gallery. A share of the classes is held out for validation, as with folder labels;
there are no test classes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..datasets.base import DataError, RetrievalData, Sample, Split, carve_validation
from ..index.integrity import read_manifest
from ..index.kept_queries import read_kept
from ..index.store import MANIFEST_FILE, current_generation


def load_feedback(index_dir: str | Path, gallery: str | Path, val_fraction: float) -> RetrievalData:
    index_dir, gallery = Path(index_dir), Path(gallery).expanduser().resolve()
    _check_gallery(index_dir, gallery)
    queries = [q for q in read_kept(index_dir) if q.box is None and q.right]
    parent: dict[Path, Path] = {}

    def find(item: Path) -> Path:
        while parent.setdefault(item, item) != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for query in queries:
        find(query.path)
        for path in (gallery / p for p in query.right if (gallery / p).is_file()):
            parent[find(path)] = find(query.path)
    groups: dict[Path, list[Path]] = {}
    for item in parent:
        groups.setdefault(find(item), []).append(item)
    classes = [_distinct(sorted(members)) for members in groups.values()]
    classes = sorted((members for members in classes if len(members) >= 2), key=lambda m: str(m[0]))
    if len(classes) < 4:
        raise DataError(
            f"{index_dir}: {len(queries)} marked queries give {len(classes)} classes of a query and its "
            "right-marked images; training needs at least 4 (mark more results right on the page or the API)"
        )
    samples = [Sample(path, label) for label, members in enumerate(classes) for path in members]
    train, val = carve_validation(Split(samples), val_fraction)
    return RetrievalData(
        name=f"feedback:{index_dir.name}",
        root=gallery,
        class_names=[f"mark-{label}" for label in range(len(classes))],
        train=train,
        val=val,
        test=Split(),
    )


def _distinct(paths: list[Path]) -> list[Path]:
    """One file of each content: a query made with a gallery image would be its own positive."""
    seen, kept = set(), []
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).digest()
        if digest not in seen:
            seen.add(digest)
            kept.append(path)
    return kept


def _check_gallery(index_dir: Path, gallery: Path) -> None:
    generation = current_generation(index_dir)
    if generation is None:
        raise DataError(f"{index_dir}: no index here; --feedback takes the index folder `metrix serve` served")
    root = read_manifest(index_dir / generation / MANIFEST_FILE)["gallery_root"]
    if "://" in root or Path(root).resolve() != gallery:
        raise DataError(f"{index_dir}: indexes {root}, not {gallery}; give --data the gallery the index holds")
