"""Bad input to the losses and to Metrix raises one clear error instead of a wrong number."""

import pytest
import torch

from metrix.losses import ContrastiveLoss, MultiSimilarityLoss, ProxyAnchorLoss, build_loss
from metrix.mixup import EmbeddingOnly, Metrix
from metrix.pairs import choose_pairs

LOSSES = [ContrastiveLoss(), MultiSimilarityLoss(), ProxyAnchorLoss(4, 8)]
ids = ["contrastive", "ms", "pa"]


@pytest.mark.parametrize("loss", LOSSES, ids=ids)
def test_length_mismatch(loss):
    with pytest.raises(ValueError, match="one label per embedding: got \\(5,\\) labels for 6 embeddings"):
        loss(torch.randn(6, 8), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("loss", LOSSES, ids=ids)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_embeddings(loss, bad):
    x = torch.randn(6, 8)
    x[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        loss(x, torch.tensor([0, 0, 1, 1, 2, 2]))


@pytest.mark.parametrize("loss", LOSSES, ids=ids)
def test_batch_of_one(loss):
    with pytest.raises(ValueError, match="at least 2 examples, got 1"):
        loss(torch.randn(1, 8), torch.tensor([0]))


@pytest.mark.parametrize("loss", LOSSES, ids=ids)
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_soft_labels_outside_unit_interval(loss, value):
    anchors, candidates = torch.randn(4, 8), torch.randn(3, 8)
    y = torch.full((4, 3), 0.5)
    y[1, 2] = value
    with pytest.raises(ValueError, match=r"soft labels must lie in \[0, 1\]"):
        loss.soft_loss(anchors, candidates, y, torch.ones(4, 3, dtype=torch.bool))


@pytest.mark.parametrize("loss", LOSSES, ids=ids)
def test_float_labels(loss):
    with pytest.raises(ValueError, match="integer class ids"):
        loss(torch.randn(4, 8), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_wrong_shapes():
    with pytest.raises(ValueError, match="2-D"):
        MultiSimilarityLoss()(torch.randn(4, 2, 2), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="must both be"):
        MultiSimilarityLoss().soft_loss(
            torch.randn(4, 8), torch.randn(3, 8), torch.ones(4, 2), torch.ones(4, 2, dtype=torch.bool)
        )


def test_proxy_anchor_label_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[0, 4\]"):
        ProxyAnchorLoss(4, 8)(torch.randn(4, 8), torch.tensor([0, 1, 2, 4]))


def test_bad_configuration():
    with pytest.raises(ValueError, match="mixup mode must be one of"):
        Metrix(MultiSimilarityLoss(), mode="pixels")
    with pytest.raises(ValueError, match="alpha > 0"):
        Metrix(MultiSimilarityLoss(), alpha=0)
    with pytest.raises(ValueError, match="negatives_per_anchor"):
        choose_pairs(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), 0.5, 0)
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        build_loss("triplet")
    with pytest.raises(ValueError, match="needs num_classes"):
        build_loss("pa")
    with pytest.raises(ValueError, match="unknown multi-similarity preset"):
        build_loss("ms", preset="paper")
    with pytest.raises(ValueError, match="'euclidean' or 'cosine'"):
        ContrastiveLoss(distance="manhattan")


def test_metrix_checks_the_batch_before_mixing():
    with pytest.raises(ValueError, match="at least 2 examples"):
        Metrix(MultiSimilarityLoss(), mode="embed")(EmbeddingOnly(), torch.randn(1, 8), torch.tensor([0]))
