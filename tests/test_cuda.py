"""The same losses and Metrix levels on a CUDA device, when there is one (skipped otherwise)."""

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from metrix.losses import ContrastiveLoss, MultiSimilarityLoss, ProxyAnchorLoss
from metrix.mixup import Metrix

from .test_metrix import TinySplitModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("name", ["contrastive", "ms", "pa"])
def test_clean_losses_match_pml_on_cuda(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g, dtype=torch.float64).cuda()
    y = (torch.arange(64) // 4).cuda()
    if name == "contrastive":
        ours, oracle = ContrastiveLoss(), pml_losses.ContrastiveLoss(pos_margin=0, neg_margin=0.5)
    elif name == "ms":
        ours, oracle = MultiSimilarityLoss(), pml_losses.MultiSimilarityLoss()
    else:
        ours = ProxyAnchorLoss(20, 128).double().cuda()
        oracle = pml_losses.ProxyAnchorLoss(20, 128).double().cuda()
        with torch.no_grad():
            oracle.proxies.copy_(ours.proxies)
    torch.testing.assert_close(ours(x, y), oracle(x, y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["input", "feature", "embed"])
def test_metrix_runs_on_cuda(mode):
    torch.manual_seed(0)
    model = TinySplitModel().cuda()
    metrix = Metrix(ProxyAnchorLoss(5, 6), mode=mode).cuda()
    images = torch.randn(10, 3, 6, 6, device="cuda")
    labels = (torch.arange(10) // 2).cuda()
    out = metrix(model, images, labels)
    out.loss.backward()
    assert out.loss.device.type == "cuda" and out.num_mixes > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("views, mixup", [(1, "feature"), (0, "input")])
def test_cpu_recipe_trains_on_cuda(tmp_path, views, mixup):
    """The CPU recipe (frozen, cached stages; PCA head) on a GPU machine, with and without the cache."""
    from .training_helpers import metrix_cli, tiny_dataset, write_config

    config = write_config(
        tmp_path / "config.json", recipe="cpu", image_size=32, embedding_size=32, epochs=1, cached_views=views
    )
    result = metrix_cli(
        "train",
        "--data",
        tiny_dataset(tmp_path / "data"),
        "--config",
        config,
        "--mixup",
        mixup,
        "--out",
        tmp_path / "run",
        "--no-progress",
    )
    assert "device cuda" in result.stdout and (tmp_path / "run" / "best").is_file()
