"""Metric losses in the generic form of METRIX.md section 1; `build_loss` makes one by name."""

from .base import MetricLoss
from .contrastive import ContrastiveLoss
from .multi_similarity import MultiSimilarityLoss
from .proxy_anchor import ProxyAnchorLoss

LOSSES = ("contrastive", "ms", "pa", "pml-ms")


def build_loss(name: str, num_classes: int | None = None, embedding_size: int | None = None, **kwargs) -> MetricLoss:
    """`contrastive` (`mixed_reduction="nonzero"` for the official code's mixed term), `ms`
    (`preset="metrix-code"` for the official code's values and miner) or
    `pa` (needs num_classes and embedding_size); `pml-ms` is pytorch-metric-learning's MS loss,
    a peer for the benchmark (no Metrix form). Other keyword arguments go to the loss."""
    if name == "contrastive":
        return ContrastiveLoss(**kwargs)
    if name == "ms":
        preset = kwargs.pop("preset", None)
        return MultiSimilarityLoss.from_preset(preset) if preset else MultiSimilarityLoss(**kwargs)
    if name == "pa":
        if num_classes is None or embedding_size is None:
            raise ValueError("the proxy anchor loss needs num_classes and embedding_size")
        return ProxyAnchorLoss(num_classes, embedding_size, **kwargs)
    if name == "pml-ms":
        from .peer import PMLMultiSimilarityLoss

        return PMLMultiSimilarityLoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


__all__ = ["MetricLoss", "ContrastiveLoss", "MultiSimilarityLoss", "ProxyAnchorLoss", "build_loss", "LOSSES"]
