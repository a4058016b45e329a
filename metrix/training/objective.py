"""What a run optimises and how, from its config: the loss (with its options) wrapped in Metrix,
the optimiser, and the gradient clipping."""

from __future__ import annotations

import torch

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


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2 decay, the official code's) over `groups`."""
    optimizer_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[config.optimizer]
    return optimizer_class(groups, lr=config.lr, weight_decay=config.weight_decay)


def clip_gradients(params, config: TrainConfig) -> None:
    """The gradients' total norm, or each element (the official code's), at config.grad_clip."""
    if config.grad_clip_mode == "value":
        torch.nn.utils.clip_grad_value_(params, config.grad_clip)
    else:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
