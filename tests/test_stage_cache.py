"""The on-disk cache of frozen-stage outputs: a hit returns what a fresh computation would, and
anything that changes the outputs (an image, a frozen weight, the transform) misses."""

import os

import numpy as np
import pytest
import torch

from metrix.datasets import load_image_folder
from metrix.model import EmbeddingModel, PooledBackbone
from metrix.training.embedding import embed_samples
from metrix.training.stage_cache import frozen_stage_outputs

from .training_helpers import tiny_dataset

START = 6


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("METRIX_CACHE", str(tmp_path / "cache"))
    data = load_image_folder(tiny_dataset(tmp_path / "data"))
    model = EmbeddingModel.create("efficientnet_lite0", embedding_size=16)
    model.backbone.preprocessing = model.backbone.preprocessing.with_size(32)
    return tmp_path / "cache" / "stages", data.test.samples[:12], model


def cached_files(directory):
    return sorted(p.name for p in directory.glob("*.pt")) if directory.is_dir() else []


def test_hit_equals_fresh_computation_and_misses_on_change(setup):
    directory, samples, model = setup
    fresh = frozen_stage_outputs(model.backbone, START, samples, (3, 4), persist=False)
    first = frozen_stage_outputs(model.backbone, START, samples, (3, 4))
    assert len(cached_files(directory)) == 1 and first.shape[:2] == (12, 2) and first.dtype == torch.float16
    assert torch.equal(first, fresh)
    assert torch.equal(frozen_stage_outputs(model.backbone, START, samples, (3, 4)), fresh)  # read back
    assert len(cached_files(directory)) == 1

    frozen_stage_outputs(model.backbone, START, samples, (None,))  # another transform
    assert len(cached_files(directory)) == 2
    os.utime(samples[0].path, ns=(1, 1))  # an image changed
    before = frozen_stage_outputs(model.backbone, START, samples, (None,))
    assert len(cached_files(directory)) == 3
    with torch.no_grad():
        model.backbone.stages()[1][0].conv_dw.weight.mul_(1.5)  # a frozen weight changed
    changed = frozen_stage_outputs(model.backbone, START, samples, (None,))
    assert len(cached_files(directory)) == 4
    assert not torch.equal(changed, before)
    with torch.no_grad():
        model.backbone.stages()[-1][0].weight.mul_(1.5)  # a trained stage changed: same frozen outputs
    frozen_stage_outputs(model.backbone, START, samples, (None,))
    assert len(cached_files(directory)) == 4
    assert not list(directory.glob("*.tmp"))


def test_a_corrupt_cache_file_is_recomputed(setup):
    directory, samples, model = setup
    expected = frozen_stage_outputs(model.backbone, START, samples)
    (path,) = directory.glob("*.pt")
    path.write_bytes(b"not a tensor")
    assert torch.equal(frozen_stage_outputs(model.backbone, START, samples), expected)


@pytest.mark.parametrize("floor", [False, True])
def test_embedding_from_cached_stages_matches_the_whole_model(setup, floor):
    _, samples, model = setup
    model = PooledBackbone(model.backbone) if floor else model
    whole, labels = embed_samples(model, samples, batch_size=5)
    for _ in range(2):  # computed, then read from the cache
        cached, cached_labels = embed_samples(model, samples, batch_size=5, frozen_stages=START)
        np.testing.assert_allclose(cached, whole, atol=1e-5, rtol=0)  # float32: the whole model's embeddings
        assert np.array_equal(labels, cached_labels)
