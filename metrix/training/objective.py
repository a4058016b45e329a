"""What a run optimises, from its config: the loss (with its options) wrapped in Metrix."""

from __future__ import annotations

from ..losses import build_loss
from ..mixup import Metrix
from .config import TrainConfig


def build_objective(config: TrainConfig, num_classes: int) -> Metrix:
    """The config's loss inside Metrix (mixing "none" is the clean loss alone)."""
    options = {"ms": {"preset": config.ms_preset}, "contrastive": {"mixed_reduction": config.mixed_reduction}}
    loss = build_loss(
        config.loss, num_classes=num_classes, embedding_size=config.embedding_size, **options.get(config.loss, {})
    )
    return Metrix(
        loss,
        mode=config.mixup,
        alpha=config.mixup_alpha,
        weight=config.mixup_weight,
        negatives_per_anchor=config.negatives_per_anchor,
        seed=config.seed,
        pair_choice=config.pair_choice,
        anchor_negative_weight=config.embed_anchor_negative_weight if config.mixup == "embed" else None,
    )
