"""Contrastive loss (Hadsell et al. 2006) in the generic form.

Distance form (default, as pytorch-metric-learning's ContrastiveLoss with L2-normalised
embeddings): rho+(s) = [d - pos_margin]+, rho-(s) = [neg_margin - d]+ with d = sqrt(2 - 2s).
Cosine form: rho+(s) = [pos_margin - s]+, rho-(s) = [s - neg_margin]+.
sigma+- are identities. The clean loss averages each term over its non-zero pair losses, as PML
does. That average jumps whenever a pair's hinge switches on, so the mixed term is by default the
plain mean over its (anchor, mix) pairs of y rho+(s) + (1 - y) rho-(s): continuous in lambda,
endpoints included. mixed_reduction="nonzero" is the official code's instead: the positive part
and the negative part of the mixed term each averaged over its own non-zero terms, as the clean
loss is.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .base import MetricLoss

# Keeps the gradient of sqrt finite for duplicate embeddings (d = 0).
_MIN_SQUARED_DISTANCE = 1e-12


class ContrastiveLoss(MetricLoss):
    def __init__(
        self,
        pos_margin: float | None = None,
        neg_margin: float = 0.5,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        mixed_reduction: Literal["mean", "nonzero"] = "mean",
    ):
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if mixed_reduction not in ("mean", "nonzero"):
            raise ValueError(f"mixed_reduction must be 'mean' or 'nonzero', got {mixed_reduction!r}")
        self.distance, self.mixed_reduction = distance, mixed_reduction
        self.pos_margin = (0.0 if distance == "euclidean" else 1.0) if pos_margin is None else pos_margin
        self.neg_margin = neg_margin

    def reduce(self, sim: Tensor, pos_weight: Tensor, neg_weight: Tensor, mixed: bool) -> Tensor:
        if self.distance == "euclidean":
            d = (2 - 2 * sim).clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
            pos = pos_weight * torch.relu(d - self.pos_margin)
            neg = neg_weight * torch.relu(self.neg_margin - d)
        else:
            pos = pos_weight * torch.relu(self.pos_margin - sim)
            neg = neg_weight * torch.relu(sim - self.neg_margin)
        if mixed and self.mixed_reduction == "mean":
            num_pairs = (pos_weight + neg_weight).sum().clamp_min(1)  # y + (1 - y) = 1 per pair
            return (pos.sum() + neg.sum()) / num_pairs
        return _mean_of_nonzero(pos) + _mean_of_nonzero(neg)


def _mean_of_nonzero(losses: Tensor) -> Tensor:
    return losses.sum() / (losses > 0).sum().clamp_min(1)
