"""Multi-similarity loss (Wang et al. 2019) in the generic form.

rho+(s) = exp(-beta (s - m)), sigma+(t) = log(1 + t) / beta;
rho-(s) = exp(gamma (s - m)),  sigma-(t) = log(1 + t) / gamma; mean over anchors.
(PML names beta/gamma alpha/beta and m base.) The optional MS miner keeps, for each anchor,
the positives less similar than its hardest negative + epsilon and the negatives more similar
than its hardest positive - epsilon; it selects clean pairs only, never mixed ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import MetricLoss, Similarities, log1p_weighted_sum_exp

PRESETS = {
    # pytorch-metric-learning's defaults, no miner.
    "pml": dict(beta=2.0, gamma=50.0, margin=0.5, miner_epsilon=None),
    # The official Metrix code's values, with the MS miner.
    "metrix-code": dict(beta=17.97, gamma=75.66, margin=0.77, miner_epsilon=0.39),
}


class MultiSimilarityLoss(MetricLoss):
    def __init__(
        self,
        beta: float = PRESETS["pml"]["beta"],
        gamma: float = PRESETS["pml"]["gamma"],
        margin: float = PRESETS["pml"]["margin"],
        miner_epsilon: float | None = PRESETS["pml"]["miner_epsilon"],
    ):
        super().__init__()
        self.beta, self.gamma, self.margin = beta, gamma, margin
        self.miner_epsilon = miner_epsilon

    @classmethod
    def from_preset(cls, preset: str) -> MultiSimilarityLoss:
        """`pml` (the defaults) or `metrix-code` (the official code's values and miner)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown multi-similarity preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return cls(**PRESETS[preset])

    def clean_candidates(self, sims: Similarities) -> Tensor:
        valid = super().clean_candidates(sims)
        if self.miner_epsilon is None:
            return valid
        sim = sims.to_batch.detach()
        same = sims.labels[:, None] == sims.labels[None, :]
        pos, neg = same & valid, ~same
        hardest_neg = sim.masked_fill(~neg, -torch.inf).amax(dim=1, keepdim=True)
        hardest_pos = sim.masked_fill(~pos, torch.inf).amin(dim=1, keepdim=True)
        keep_pos = pos & (sim - self.miner_epsilon < hardest_neg)
        keep_neg = neg & (sim + self.miner_epsilon > hardest_pos)
        return keep_pos | keep_neg

    def reduce(self, sim: Tensor, pos_weight: Tensor, neg_weight: Tensor, mixed: bool) -> Tensor:
        pos = log1p_weighted_sum_exp(-self.beta * (sim - self.margin), pos_weight) / self.beta
        neg = log1p_weighted_sum_exp(self.gamma * (sim - self.margin), neg_weight) / self.gamma
        return (pos + neg).mean()
