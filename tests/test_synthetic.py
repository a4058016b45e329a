"""The built-in synthetic dataset: deterministic, complete, cached, and genuinely varied."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from metrix.datasets.synthetic import (
    MANIFEST,
    SYNTHETIC_DEFAULTS,
    class_names,
    default_synthetic_root,
    generate_synthetic,
)

SMALL = {"num_classes": 12, "images_per_class": 4, "image_size": 32}


def read_tree(root):
    """{relative path: bytes} of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(root, name, i):
    return np.asarray(Image.open(root / name / f"{i:04d}.png"), dtype=float)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("small") / "data", **SMALL, workers=1)


def test_same_seed_same_bytes_other_seed_other_images(small, tmp_path):
    again = generate_synthetic(tmp_path / "again", **SMALL, workers=1)
    assert read_tree(again) == read_tree(small)
    other = read_tree(generate_synthetic(tmp_path / "other", **SMALL, seed=1, workers=1))
    same = read_tree(small)
    pngs = [k for k in same if k.endswith(".png")]
    assert all(other[k] != same[k] for k in pngs)


def test_worker_count_does_not_change_the_bytes(small, tmp_path):
    assert read_tree(generate_synthetic(tmp_path / "two", **SMALL, workers=2)) == read_tree(small)


def test_layout(small):
    names = class_names(SMALL["num_classes"])
    folders = sorted(p.name for p in small.iterdir() if p.is_dir())
    assert folders == names
    assert [int(n.split("_")[0]) for n in folders] == list(range(SMALL["num_classes"]))
    assert len(set(names)) == len(names) and all(len(n.split("_")[1].split("-")) == 3 for n in names)
    for name in names:
        files = sorted(p.name for p in (small / name).iterdir())
        assert files == [f"{i:04d}.png" for i in range(SMALL["images_per_class"])]
        for f in files:
            with Image.open(small / name / f) as image:
                assert image.mode == "RGB" and image.size == (SMALL["image_size"],) * 2
    manifest = json.loads((small / MANIFEST).read_text())
    assert manifest["format"] >= 1 and manifest["classes"] == names
    assert {k: manifest[k] for k in SMALL} == SMALL and manifest["seed"] == 0


def test_defaults_are_large_enough():
    assert SYNTHETIC_DEFAULTS["num_classes"] >= 100 and SYNTHETIC_DEFAULTS["images_per_class"] >= 30
    names = class_names(SYNTHETIC_DEFAULTS["num_classes"])
    assert len(names) == SYNTHETIC_DEFAULTS["num_classes"] and names == sorted(names)
    with pytest.raises(ValueError):
        class_names(10_000)


def test_default_root_follows_cache_and_parameters(monkeypatch, tmp_path):
    monkeypatch.setenv("METRIX_CACHE", str(tmp_path))
    root = default_synthetic_root()
    assert root.parent == tmp_path and root.name.startswith("synthetic-v")
    assert default_synthetic_root(seed=1) != root and default_synthetic_root() == root


def test_complete_dataset_is_not_rewritten(tmp_path):
    root = generate_synthetic(tmp_path / "data", **SMALL, workers=1)
    times = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    os.utime(root / MANIFEST, ns=(1, 1))  # an old mtime that a rewrite would change
    times[root / MANIFEST] = 1
    assert generate_synthetic(root, **SMALL, workers=1) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == times


def test_other_or_partial_dataset_is_regenerated(small, tmp_path):
    expected = read_tree(small)
    root = generate_synthetic(tmp_path / "data", **{**SMALL, "images_per_class": 2}, workers=1)
    generate_synthetic(root, **SMALL, workers=1)  # different manifest
    assert read_tree(root) == expected
    (root / class_names(3)[-1] / "0001.png").unlink()  # missing file
    generate_synthetic(root, **SMALL, workers=1)
    assert read_tree(root) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary leftovers


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        generate_synthetic(tmp_path / "photos", **SMALL, workers=1)
    assert (tmp_path / "photos" / "mine.jpg").exists()


def test_images_vary_within_and_between_classes(small):
    names = class_names(SMALL["num_classes"])
    n = SMALL["images_per_class"]
    images = np.stack([[load(small, name, i) for i in range(n)] for name in names])  # C, N, H, W, 3
    within = [
        np.abs(images[c, i] - images[c, j]).mean() for c in range(len(names)) for i in range(n) for j in range(i + 1, n)
    ]
    assert min(within) > 15  # pose, clutter, colour jitter: no two images are near-copies
    means = images.mean(axis=1)
    between = [np.abs(means[a] - means[b]).mean() for a in range(len(names)) for b in range(a + 1, len(names))]
    assert min(between) > 8
