"""--train-images-per-class: a small folder cut from a large one (issue 39). N images of each
training class, drawn with the run's seed; validation and test classes whole."""

import json
import os
from collections import Counter

import pytest

from metrix.datasets.base import keep_per_class
from metrix.datasets.folder import load_image_folder
from metrix.training.config import ConfigError, resolve_config
from metrix.training.data import load_training_data

from .training_helpers import metrix_cli, tiny_dataset, write_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """20 classes x 12 real PNG images: 10 train classes (2 held out for validation), 10 test."""
    return tiny_dataset(tmp_path_factory.mktemp("data") / "d")


def test_keeps_n_of_each_class_drawn_with_the_seed(folder):
    train = load_image_folder(folder).train
    kept = keep_per_class(train, 3, seed=0)
    assert Counter(kept.labels) == {label: 3 for label in train.classes}
    assert set(kept.samples) <= set(train.samples)
    assert keep_per_class(train, 3, seed=0).samples == kept.samples  # the same seed, the same images
    assert keep_per_class(train, 3, seed=1).samples != kept.samples
    assert set(kept.samples) <= set(keep_per_class(train, 6, seed=0).samples)  # nested counts
    assert keep_per_class(train, 50, seed=0).samples == train.samples  # fewer than N: all of them


def test_only_training_classes_are_cut_and_mixing_runs_share_the_images(folder):
    whole = load_training_data(resolve_config(recipe="full", data=str(folder)))
    loaded = {
        mixup: load_training_data(
            resolve_config(recipe="full", data=str(folder), train_images_per_class=4, seed=3, mixup=mixup),
            log=lambda *a: None,
        )
        for mixup in ("none", "feature")
    }
    cut = loaded["none"]
    assert cut.train.samples == loaded["feature"].train.samples
    assert Counter(cut.train.labels) == {label: 4 for label in whole.train.classes}
    assert cut.val.samples == whole.val.samples and cut.test.samples == whole.test.samples
    assert len(cut.val) == 2 * 12 and len(cut.test) == 10 * 12


def test_train_records_it_and_trains_on_the_cut(folder, tmp_path):
    out = tmp_path / "run"
    result = metrix_cli(
        "train",
        "--data",
        folder,
        "--config",
        write_config(tmp_path / "c.json", epochs=1, train_retrieval=True),  # 2 classes x 3 images: fewer than K = 8
        "--train-images-per-class",
        "3",
        "--seed",
        "2",
        "--out",
        out,
        "--no-progress",
        env={**os.environ, "METRIX_CACHE": str(tmp_path / "cache")},
    )
    assert "kept 24 of 96 training images: at most 3 of each of the 8 training classes (drawn with seed 2)" in (
        result.stdout
    )
    assert json.loads((out / "config.json").read_text())["train_images_per_class"] == 3
    latest = (out / "latest").read_text().strip()
    checkpoint = json.loads((out / "checkpoints" / latest / "config.json").read_text())
    assert checkpoint["data"]["num_train_images"] == 24 and checkpoint["data"]["num_val_images"] == 24
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= record["train_map_at_r"] <= 100  # training-class retrieval among 6 images


def test_fewer_than_two_is_refused():
    with pytest.raises(ConfigError, match="at least 2"):
        resolve_config(recipe="full", train_images_per_class=1)
    with pytest.raises(ConfigError, match="labels folder"):
        resolve_config(recipe="full", train_images_per_class=5, labels="instances")
