"""Proxy anchor loss (Kim et al. 2020) in the generic form: the anchors are learnable proxies.

rho+(s) = exp(-alpha (s - delta)), rho-(s) = exp(alpha (s + delta)), sigma+- = log(1 + t).
The positive term is averaged over proxies with a positive in the batch, the negative term over
all proxies. For mixed examples a proxy's label is the mixed one-hot label of the example.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..pairs import MixPlan
from .base import MetricLoss, Similarities, log1p_weighted_sum_exp

#: The paper's proxies learn this many times faster than the network.
PROXY_LR_MULTIPLIER = 100.0


class ProxyAnchorLoss(MetricLoss):
    # The anchors are proxies and every example is a positive of its class's proxy, so the
    # positive-negative mixes are each example with its own hardest negatives.
    mix_anchor_positives = False

    def __init__(self, num_classes: int, embedding_size: int, alpha: float = 32.0, delta: float = 0.1):
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(f"need num_classes >= 1 and embedding_size >= 1, got {num_classes}, {embedding_size}")
        self.num_classes, self.alpha, self.delta = num_classes, alpha, delta
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def anchors(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"proxy anchor labels must lie in [0, {self.num_classes}), "
                f"got [{labels.min().item()}, {labels.max().item()}]"
            )
        proxies = self.proxies.to(embeddings.dtype)
        return proxies, torch.arange(self.num_classes, device=labels.device)

    def clean_candidates(self, sims: Similarities) -> Tensor:
        return torch.ones_like(sims.to_batch, dtype=torch.bool)

    def mixed_candidates(self, plan: MixPlan, num_anchors: int) -> tuple[Tensor | None, Tensor]:
        """Every proxy sees every mixed example."""
        return None, torch.ones(num_anchors, len(plan), dtype=torch.bool, device=plan.sources.device)

    def reduce(self, sim: Tensor, pos_weight: Tensor, neg_weight: Tensor, mixed: bool) -> Tensor:
        pos = log1p_weighted_sum_exp(-self.alpha * (sim - self.delta), pos_weight)
        neg = log1p_weighted_sum_exp(self.alpha * (sim + self.delta), neg_weight)
        with_positive = (pos_weight > 0).any(dim=1).sum().clamp_min(1)
        return pos.sum() / with_positive + neg.sum() / self.num_classes

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups that give the proxies their own, faster learning rate."""
        return [{"params": [self.proxies], "lr": lr * PROXY_LR_MULTIPLIER, "name": "proxies"}]
