"""The clean losses equal pytorch-metric-learning's, values and gradients (the test oracle)."""

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity

from metrix.losses import ContrastiveLoss, MultiSimilarityLoss, ProxyAnchorLoss, build_loss
from metrix.losses.multi_similarity import PRESETS

from .conftest import make_labels

SHAPES = [(2, 3), (7, 16), (32, 64), (100, 512)]
LAYOUTS = ["balanced", "random", "distinct", "single"]
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def _pair(ours, oracle, embeddings, labels, oracle_extra=()):
    """Loss value and gradient w.r.t. the (unnormalised) embeddings from both implementations."""
    x_ours = embeddings.clone().requires_grad_(True)
    x_oracle = embeddings.clone().requires_grad_(True)
    value_ours = ours(x_ours, labels)
    value_oracle = oracle(x_oracle, labels, *[f(x_oracle, labels) for f in oracle_extra])
    value_ours.backward()
    value_oracle.backward()
    return (value_ours, x_ours.grad), (value_oracle, x_oracle.grad)


def _case(shape, layout, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + 17 * shape[0] + shape[1])
    n, d = shape
    return torch.randn(n, d, generator=g, dtype=dtype), make_labels(layout, n, g)


def _assert_same(ours, oracle):
    (v1, g1), (v2, g2) = ours, oracle
    torch.testing.assert_close(v1.detach(), torch.as_tensor(v2).detach().to(v1.dtype), **TOLERANCE)
    torch.testing.assert_close(g1, g2, **TOLERANCE)


CONTRASTIVE_CASES = {
    # METRIX.md: distance form, pos margin 0, neg margin 0.5 (PML's default distance).
    "euclidean": (ContrastiveLoss(), lambda: pml_losses.ContrastiveLoss(pos_margin=0, neg_margin=0.5)),
    "cosine": (
        ContrastiveLoss(distance="cosine"),
        lambda: pml_losses.ContrastiveLoss(pos_margin=1, neg_margin=0.5, distance=CosineSimilarity()),
    ),
    "euclidean-margins": (
        ContrastiveLoss(pos_margin=0.2, neg_margin=1.0),
        lambda: pml_losses.ContrastiveLoss(pos_margin=0.2, neg_margin=1.0),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", list(CONTRASTIVE_CASES))
def test_contrastive_matches_pml(variant, shape, layout, dtype):
    ours, oracle = CONTRASTIVE_CASES[variant]
    x, y = _case(shape, layout, dtype)
    _assert_same(*_pair(ours, oracle(), x, y))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_multi_similarity_matches_pml_defaults(shape, layout, dtype):
    x, y = _case(shape, layout, dtype)
    _assert_same(*_pair(MultiSimilarityLoss(), pml_losses.MultiSimilarityLoss(), x, y))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_multi_similarity_metrix_code_preset_with_miner_matches_pml(shape, layout):
    p = PRESETS["metrix-code"]
    oracle = pml_losses.MultiSimilarityLoss(alpha=p["beta"], beta=p["gamma"], base=p["margin"])
    miner = pml_miners.MultiSimilarityMiner(epsilon=p["miner_epsilon"])
    # Correlated embeddings so the miner has real choices to make (random 512-d ones are all ~orthogonal).
    x, y = _case(shape, layout, torch.float64)
    x = (
        x
        + 2.0 * torch.randn(int(y.max()) + 1, x.shape[1], dtype=x.dtype, generator=torch.Generator().manual_seed(1))[y]
    )
    ours = build_loss("ms", preset="metrix-code")
    _assert_same(*_pair(ours, oracle, x, y, oracle_extra=[miner]))


def test_miner_really_drops_pairs():
    """Guard for the test above: on this batch the miner changes the loss, so a no-op miner would fail."""
    x, y = _case((32, 64), "balanced", torch.float64)
    x = x + 2.0 * torch.randn(int(y.max()) + 1, 64, dtype=x.dtype, generator=torch.Generator().manual_seed(1))[y]
    p = {k: v for k, v in PRESETS["metrix-code"].items() if k != "miner_epsilon"}
    assert not torch.isclose(MultiSimilarityLoss(**p)(x, y), MultiSimilarityLoss.from_preset("metrix-code")(x, y))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_proxy_anchor_matches_pml(shape, layout, dtype):
    x, y = _case(shape, layout, dtype)
    num_classes = int(y.max()) + 3  # some proxies have no example in the batch
    ours = ProxyAnchorLoss(num_classes, shape[1]).to(dtype)
    oracle = pml_losses.ProxyAnchorLoss(num_classes, shape[1]).to(dtype)
    with torch.no_grad():
        oracle.proxies.copy_(ours.proxies)
    _assert_same(*_pair(ours, oracle, x, y))
    torch.testing.assert_close(ours.proxies.grad, oracle.proxies.grad, **TOLERANCE)


def test_proxy_anchor_defaults_are_the_papers():
    pa = ProxyAnchorLoss(5, 8)
    assert (pa.alpha, pa.delta) == (32.0, 0.1)
    assert ContrastiveLoss().neg_margin == 0.5
    ms = MultiSimilarityLoss()
    assert (ms.beta, ms.gamma, ms.margin, ms.miner_epsilon) == (2.0, 50.0, 0.5, None)
    ms = MultiSimilarityLoss.from_preset("metrix-code")
    assert (ms.beta, ms.gamma, ms.margin, ms.miner_epsilon) == (17.97, 75.66, 0.77, 0.39)


def test_the_pml_peer_is_pmls_loss_and_refuses_mixing():
    from metrix.mixup import EmbeddingOnly, Metrix
    from metrix.training.config import ConfigError, resolve_config

    embeddings, labels = torch.randn(24, 16, generator=torch.Generator().manual_seed(3)), torch.arange(24) // 4
    peer, ours = build_loss("pml-ms"), build_loss("ms", preset="pml")
    torch.testing.assert_close(peer(embeddings, labels), ours(embeddings, labels), **TOLERANCE)
    with pytest.raises(ValueError, match="no Metrix form"):
        Metrix(peer, mode="embed")(EmbeddingOnly(), embeddings, labels, lam=0.5)
    with pytest.raises(ConfigError, match="no Metrix form"):
        resolve_config(loss="pml-ms", mixup="feature")
