"""Any timm model as a backbone (`--backbone timm:NAME`), offline: random weights
(pretrained=False) through the real code paths, timm itself as the oracle for features,
pooling and preprocessing, weights from a file or a hand-made Hugging Face cache, and the
one-line offline error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from metrix.backbones import BackboneError, create_backbone
from metrix.datasets import load_image_folder
from metrix.export.runtime import load_embedder
from metrix.losses import build_loss
from metrix.mixup import Metrix
from metrix.model import EmbeddingModel, PooledBackbone
from metrix.training.embedding import embed_samples

from .service_helpers import post_image, serve_process
from .training_helpers import metrix_cli, tiny_dataset, write_config

CNN, VIT = "timm:convnext_atto.d2_in1k", "timm:vit_tiny_patch16_224.augreg_in21k"

#: (model, input size, stages the split must find; 1: not a sequence of modules, runs whole)
SPLITS = [
    ("resnet18", 64, 5),
    ("convnext_atto", 64, 4),
    ("efficientnet_b0", 64, 5),
    ("mobilenetv3_small_100", 64, 5),
    ("regnetx_002", 64, 5),
    ("vit_tiny_patch16_224", 32, 12),
    ("vit_small_patch14_reg4_dinov2", 28, 12),
    ("vit_base_patch16_siglip_224", 32, 12),
    ("swin_tiny_patch4_window7_224", 224, 4),
    ("eva02_tiny_patch14_224", 28, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, size, count", SPLITS)
def test_stages_compose_to_timms_forward_features(name, size, count):
    torch.manual_seed(0)
    backbone = create_backbone(f"timm:{name}", pretrained=False, image_size=size).eval()
    stages = backbone.stages()
    assert len(stages) == count
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = backbone.net.forward_features(x)
        for start in range(len(stages)):  # resuming from any stage's output gives the same features
            partial = backbone.run_stages(x, 0, start)
            torch.testing.assert_close(backbone.features_from(partial, start), expected, rtol=1e-4, atol=1e-5)
    in_stages = {id(p) for s in stages for p in s.parameters()}
    assert {id(p) for p in backbone.parameters()} == in_stages | {id(p) for p in backbone.pooling_parameters()}


def test_preprocessing_is_the_models_own_pretrained_config():
    for name in ("vit_small_patch14_dinov2.lvd142m", "vit_base_patch16_clip_224.openai", "convnext_tiny.fb_in22k"):
        backbone = create_backbone(f"timm:{name}", pretrained=False)
        expected = timm.data.resolve_data_config(model=timm.create_model(name, pretrained=False))
        pre = backbone.preprocessing
        assert (3, pre.image_size, pre.image_size) == expected["input_size"]
        assert (pre.mean, pre.std) == (tuple(expected["mean"]), tuple(expected["std"]))
        assert (pre.crop_fraction, pre.interpolation) == (expected["crop_pct"], expected["interpolation"])
    dinov2 = create_backbone("timm:vit_small_patch14_dinov2.lvd142m", pretrained=False, image_size=56)
    assert dinov2.preprocessing.image_size == 56 and dinov2.net.patch_embed.grid_size == (4, 4)


def test_vit_pools_as_its_family_and_cnn_as_the_paper():
    torch.manual_seed(0)
    with torch.no_grad():
        vit = create_backbone(VIT, pretrained=False, image_size=32).eval()
        tokens = vit(torch.randn(2, 3, 32, 32))
        assert tokens.shape == (2, 1 + 4, 192)
        torch.testing.assert_close(vit.pool(tokens), tokens[:, 0])  # the CLS token
        eva = create_backbone("timm:eva02_tiny_patch14_224", pretrained=False, image_size=28).eval()
        tokens = eva(torch.randn(2, 3, 28, 28))  # average of the patch tokens, then its fc_norm
        torch.testing.assert_close(eva.pool(tokens), eva.net.fc_norm(tokens[:, eva.net.num_prefix_tokens :].mean(1)))
        cnn = create_backbone(CNN, pretrained=False, image_size=64).eval()
        fmap = cnn(torch.randn(2, 3, 64, 64))
        torch.testing.assert_close(cnn.pool(fmap), fmap.mean((2, 3)) + fmap.amax((2, 3)))


@pytest.mark.parametrize("name, size", [(CNN, 32), (VIT, 32), ("timm:vit_base_patch16_siglip_224", 32)])
def test_metrix_feature_mixing_trains_every_part(name, size):
    """One training step with feature mixing: the mixes are of whole feature maps or token
    sequences, and gradients reach the first stage and the pooling (SigLIP's attention pool)."""
    torch.manual_seed(0)
    model = EmbeddingModel.create(name, 16, pretrained=False, image_size=size)
    metrix = Metrix(build_loss("ms"), mode="feature", seed=0)
    labels = torch.arange(4).repeat_interleave(3)
    out = metrix(model, torch.randn(12, 3, size, size), labels, lam=0.3)
    assert out.num_mixes > 0 and out.mixed > 0 and torch.isfinite(out.loss)
    out.loss.backward()
    first = [p for p in model.backbone.stages()[0].parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first[:1])
    used = [p for p in model.backbone.pooling_parameters() if p.grad is not None]
    if "siglip" in name:
        assert used and all(p.grad.abs().sum() > 0 for p in used)


@pytest.mark.parametrize("name", [CNN, VIT])
def test_cached_stages_give_the_whole_models_embeddings(name, tmp_path, monkeypatch):
    monkeypatch.setenv("METRIX_CACHE", str(tmp_path / "cache"))
    samples = load_image_folder(tiny_dataset(tmp_path / "data")).test.samples[:10]
    torch.manual_seed(0)
    model = EmbeddingModel.create(name, 16, pretrained=False, image_size=32)
    frozen = len(model.backbone.stages()) - 1
    for embedder in (model, PooledBackbone(model.backbone)):
        whole, _ = embed_samples(embedder, samples, batch_size=4)
        for _ in range(2):  # computed, then read back from the stage cache
            cached, _ = embed_samples(embedder, samples, batch_size=4, frozen_stages=frozen)
            np.testing.assert_allclose(cached, whole, atol=1e-5, rtol=0)
    assert len(list((tmp_path / "cache" / "stages").glob("*.pt"))) == 1  # the model and the floor share it


@pytest.fixture(scope="module", params=[CNN, VIT], ids=["cnn", "vit"])
def pipeline(request, tmp_path_factory):
    """A timm backbone through train (cached stages, feature mixing), export, build-index."""
    tmp = tmp_path_factory.mktemp("timm")
    data = tiny_dataset(tmp / "data")
    config = write_config(
        tmp / "config.json",
        backbone=request.param,
        pretrained=False,
        epochs=1,
        warmup_epochs=0,
        train_stages=2,
        cached_views=2,
        head_init="pca",
        mixup="feature",
    )
    metrix_cli("train", "--data", data, "--config", config, "--out", tmp / "run", "--no-progress")
    exported = metrix_cli("export", tmp / "run")
    model = tmp / "run" / "checkpoints" / (tmp / "run" / "best").read_text() / "model.onnx"
    metrix_cli("build-index", data, "--model", model, "--out", tmp / "index", "--no-progress")
    return request.param, data, tmp / "run", model, tmp / "index", exported.stdout


@pytest.mark.slow
def test_export_verifies_at_batch_1_and_more_and_serves_without_torch(pipeline):
    name, data, run, model, _, stdout = pipeline
    assert "parity  onnxruntime vs PyTorch, batch 1" in stdout and "batch 7" in stdout
    assert load_embedder(model).metadata.backbone == name
    image = sorted(data.rglob("*.png"))[0]
    code = (
        "import sys; from metrix.export.runtime import load_embedder; from metrix.images import open_rgb; "
        f"e = load_embedder({str(model)!r}); v = e.embed_images([open_rgb({str(image)!r})]); "
        "assert v.shape == (1, 32), v.shape; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.slow
def test_search_and_serve_find_the_query_itself(pipeline):
    _, data, _, _, index, _ = pipeline
    query = sorted(data.rglob("*.png"))[5]
    hits = json.loads(metrix_cli("search", query, "--index", index, "-k", "3", "--json").stdout)["results"]
    assert hits[0]["path"] == str(query.relative_to(data)) and hits[0]["score"] > 0.9999
    with serve_process(index) as (url, _):
        served = post_image(httpx.Client(timeout=30), url, query, k=3).json()["results"]
    assert [h["path"] for h in served] == [h["path"] for h in hits]


@pytest.mark.slow
def test_evaluate_with_the_floor(pipeline):
    _, _, run, _, _, _ = pipeline
    reports = json.loads(metrix_cli("evaluate", run, "--floor", "--json").stdout)
    assert reports["floor"]["checkpoint"] == "untrained backbone (floor)"
    assert 0 <= reports["floor"]["map_at_r"] <= 100 and reports["trained"]["map_at_r"] != reports["floor"]["map_at_r"]


def _net_state(name: str, seed: int) -> dict:
    """A whole timm model's weights, classifier included, as a timm checkpoint holds them."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).state_dict()


def test_weights_from_a_file(tmp_path):
    state = _net_state("resnet18", 1)
    assert "fc.weight" in state
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pth")
    for path in ("w.safetensors", "checkpoint.pth"):
        loaded = create_backbone("timm:resnet18", weights=str(tmp_path / path)).net.state_dict()
        assert loaded.keys() == state.keys() - {"fc.weight", "fc.bias"}
        assert all(torch.equal(v, state[k]) for k, v in loaded.items())
    vit = _net_state("vit_tiny_patch16_224", 1)  # at 224 px: 14 x 14 patches
    save_file({k: v.contiguous() for k, v in vit.items()}, tmp_path / "vit.safetensors")
    small = create_backbone("timm:vit_tiny_patch16_224", weights=str(tmp_path / "vit.safetensors"), image_size=64).net
    assert small.pos_embed.shape == (1, 1 + 4 * 4, 192)  # resampled by timm's own loader
    assert torch.equal(small.blocks[3].mlp.fc1.weight, vit["blocks.3.mlp.fc1.weight"])
    save_file({k: v.contiguous() for k, v in _net_state("resnet34", 0).items()}, tmp_path / "other.safetensors")
    for path, reason in (("other.safetensors", "cannot be loaded into resnet18"), ("missing.pth", "does not exist")):
        with pytest.raises(BackboneError, match=reason) as error:
            create_backbone("timm:resnet18", weights=str(tmp_path / path))
        assert "\n" not in str(error.value)
    with pytest.raises(BackboneError, match="--weights applies to timm:NAME"):
        create_backbone("efficientnet_lite0", weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(BackboneError, match="timm has no model 'nope'"):
        create_backbone("timm:nope", pretrained=False)


def _hub_cache(root: Path, name: str, state: dict) -> Path:
    """The Hugging Face cache layout that `hf_hub_download` leaves for timm/NAME."""
    snapshot = root / f"models--timm--{name}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / f"models--timm--{name}" / "refs").mkdir()
    (root / f"models--timm--{name}" / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


@pytest.mark.slow
def test_cached_weights_load_offline_and_are_listed(tmp_path):
    state = _net_state("resnet18", 2)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _hub_cache(tmp_path / "hub", "resnet18.a1_in1k", state)
    torch.save(state, tmp_path / "expected.pth")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = (
        "import torch; from metrix.backbones import create_backbone; "
        "net = create_backbone('timm:resnet18.a1_in1k').net.state_dict(); "
        f"expected = torch.load({str(tmp_path / 'expected.pth')!r}); "
        "assert all(torch.equal(net[k], v) for k, v in expected.items()); print('same')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "same", result.stderr
    listing = metrix_cli("backbones", env=env).stdout
    assert "timm:resnet18.a1_in1k" in listing.split("weights cached in")[1].splitlines()[0]
    assert "efficientnet_lite0   weights on this machine" in listing


@pytest.mark.slow
@pytest.mark.parametrize("network", ["offline", "unreachable"])
def test_missing_weights_fail_in_one_line_saying_what_to_do(tmp_path, network):
    """With HF_HUB_OFFLINE, or a hub that refuses connections: one line, at once, not a trace or
    huggingface_hub's minute of retries (the timeout guards against that, it measures nothing)."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "empty"),
        "HF_HUB_OFFLINE": "1" if network == "offline" else "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    data = tiny_dataset(tmp_path / "data")
    result = metrix_cli(
        "train",
        "--data",
        data,
        "--backbone",
        "timm:resnet18.a1_in1k",
        "--out",
        tmp_path / "run",
        check=False,
        env=env,
        timeout=40,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "metrix backbones --download timm:resnet18.a1_in1k" in result.stderr and "--no-pretrained" in result.stderr
    assert ("HF_HUB_OFFLINE is set" if network == "offline" else "127.0.0.1 cannot be reached") in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_backbone_that_runs_whole_refuses_frozen_stages(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    config = write_config(
        tmp_path / "config.json", backbone="timm:eva02_tiny_patch14_224", pretrained=False, train_stages=2
    )
    result = metrix_cli("train", "--data", data, "--config", config, "--out", tmp_path / "run", check=False)
    assert result.returncode == 2 and "runs as one stage" in result.stderr and result.stderr.count("\n") == 1
