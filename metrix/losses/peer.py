"""pytorch-metric-learning's own multi-similarity loss, trained through the same recipe as ours:
the benchmark's peer row. It has no Metrix form, so it trains with `--mixup none` only, and it
needs pytorch-metric-learning installed (a dev dependency, imported only here)."""

from __future__ import annotations

from torch import Tensor

from .base import MetricLoss, Similarities
from .multi_similarity import PRESETS


class PMLMultiSimilarityLoss(MetricLoss):
    def __init__(self):
        super().__init__()
        try:
            from pytorch_metric_learning.losses import MultiSimilarityLoss
        except ImportError:
            raise ValueError("loss pml-ms needs pytorch-metric-learning: pip install pytorch-metric-learning") from None
        preset = PRESETS["pml"]
        self.reference = MultiSimilarityLoss(alpha=preset["beta"], beta=preset["gamma"], base=preset["margin"])

    def clean(self, sims: Similarities) -> Tensor:
        return self.reference(sims.embeddings, sims.labels)

    def mixed(self, *args) -> Tensor:
        raise ValueError("the pml-ms peer has no Metrix form; train it with --mixup none")

    mixed_embeddings = mixed
