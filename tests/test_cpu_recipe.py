"""The pieces of the CPU recipe: frozen stages cached for several views, a trainable tail, a
PCA-initialised head, and frozen stages that really stay frozen."""

import pytest
import torch
from safetensors.torch import load_file

from metrix.datasets import load_image_folder
from metrix.model import EmbeddingModel, init_head_with_pca
from metrix.training.config import ConfigError, resolve_config
from metrix.training.stage_cache import CachedTail, FeatureCache

from .training_helpers import metrix_cli, tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tiny_dataset(tmp_path_factory.mktemp("data") / "d")
    data = load_image_folder(root)
    model = EmbeddingModel.create("efficientnet_lite0", embedding_size=16)
    model.backbone.preprocessing = model.backbone.preprocessing.with_size(32)
    return root, data, model


def test_stages_compose_to_the_whole_backbone(tiny):
    _, _, model = tiny
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        whole = model.backbone(images)
        for k in range(len(model.backbone.stages()) + 1):
            torch.testing.assert_close(CachedTail(model, k).features(model.backbone.run_stages(images, 0, k)), whole)


def test_cache_holds_distinct_seeded_views(tiny):
    _, data, model = tiny
    samples = data.train.samples[:10]
    label_map = {c: i for i, c in enumerate(data.train.classes)}
    a = FeatureCache.build(model, samples, label_map, start=6, views=3, seed=1)
    b = FeatureCache.build(model, samples, label_map, start=6, views=3, seed=1)
    assert a.features.dtype == torch.float16 and a.features.shape[:2] == (10, 3)
    assert torch.equal(a.features, b.features)  # seeded
    assert not torch.equal(a.features[:, 0], a.features[:, 1])  # views are different augmentations
    x1, y1 = a.batch([0, 3, 5], epoch_seed=7)
    x2, _ = a.batch([0, 3, 5], epoch_seed=7)
    assert torch.equal(x1, x2) and y1.tolist() == [label_map[samples[i].label] for i in (0, 3, 5)]
    seen = {tuple(a.batch(list(range(10)), epoch_seed=e)[0].flatten()[:5].tolist()) for e in range(6)}
    assert len(seen) > 1  # epochs draw different views


def test_pca_head_projects_onto_principal_directions():
    torch.manual_seed(0)
    pooled = torch.randn(200, 32) @ torch.diag(torch.linspace(5, 0.1, 32))
    model = EmbeddingModel.create("efficientnet_lite0", embedding_size=8, pretrained=False)
    head = torch.nn.Linear(32, 8)
    model.embedding_head.linear = head
    init_head_with_pca(model.embedding_head, pooled)
    torch.testing.assert_close(head.weight @ head.weight.T, torch.eye(8), atol=1e-4, rtol=0)
    projected = head(pooled)
    torch.testing.assert_close(projected.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    variances = projected.var(0)
    assert (variances[:-1] >= variances[1:] - 1e-4).all()  # ordered by explained variance
    assert variances[0] > 20  # the first direction is the high-variance one


def test_config_rules():
    cpu = resolve_config(recipe="cpu")
    assert (cpu.image_size, cpu.train_stages, cpu.cached_views, cpu.head_init, cpu.lr) == (160, 3, 5, "pca", 3e-5)
    with pytest.raises(ConfigError, match="cached-views needs train-stages"):
        resolve_config(recipe="full", cached_views=3)
    with pytest.raises(ConfigError, match="input mixing needs pixels"):
        resolve_config(recipe="cpu", mixup="input")


@pytest.mark.slow
def test_frozen_stages_stay_frozen_and_the_tail_trains(tiny, tmp_path):
    root, _, model = tiny
    out = tmp_path / "run"
    metrix_cli(
        "train",
        "--data",
        root,
        "--recipe",
        "cpu",
        "--image-size",
        32,
        "--batch-size",
        8,
        "--samples-per-class",
        2,
        "--epochs",
        1,
        "--embedding-size",
        16,
        "--lr",
        1e-3,
        "--out",
        out,
        "--no-progress",
        "--num-workers",
        0,
    )
    trained = load_file(out / "checkpoints" / "epoch-0001" / "model.safetensors")
    pretrained = {f"model.{k}": v for k, v in model.state_dict().items()}
    frozen = [k for k in trained if k.startswith(("model.backbone.conv_stem", "model.backbone.blocks.4."))]
    tail = [
        k
        for k in trained
        if k.startswith(("model.backbone.blocks.6.", "model.backbone.conv_head")) and "weight" in k and "bn" not in k
    ]
    assert frozen and tail
    assert all(torch.equal(trained[k], pretrained[k]) for k in frozen)
    assert any(not torch.equal(trained[k], pretrained[k]) for k in tail)
