"""Metrix: the clean loss plus w times the same loss on mixed examples (docs/metrix.md).

A model takes part through two methods, `features(images)` (the backbone up to its last feature
map) and `head(features)` (pooling, linear, L2 normalisation), so mixing can happen on the input
pixels, on the feature map, or on the embeddings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from .losses.base import MetricLoss
from .pairs import choose_pairs

MixupMode = Literal["none", "input", "feature", "embed"]
MIXUP_MODES: tuple[str, ...] = ("none", "input", "feature", "embed")
#: Hardest negatives per anchor when not given: input mixing re-encodes every mix, so keep it
#: to one (as the paper does); feature and embedding mixes are cheap.
DEFAULT_NEGATIVES_PER_ANCHOR = {"input": 1, "feature": 3, "embed": 3}
#: "all": every iteration mixes positive-negative pairs for anchors with a positive in the batch
#: and anchor-negative pairs for the others. "coin": the official code's choice, one of the two
#: kinds per iteration with probability 1/2 (proxy anchor, whose anchors are proxies, ignores it).
PAIR_CHOICES: tuple[str, ...] = ("all", "coin")


class SplitModel(Protocol):
    def features(self, images: Tensor) -> Tensor: ...

    def head(self, features: Tensor) -> Tensor: ...


@dataclass
class MetrixOutput:
    loss: Tensor  # clean + weight * mixed: what to backpropagate
    clean: Tensor
    mixed: Tensor
    lam: float
    num_mixes: int


class Metrix(nn.Module):
    """Wraps a MetricLoss; owns the Beta(alpha, alpha) draw of lambda (one per iteration)."""

    def __init__(
        self,
        loss: MetricLoss,
        mode: MixupMode = "feature",
        alpha: float = 2.0,
        weight: float = 0.4,
        negatives_per_anchor: int | None | Literal["auto"] = "auto",
        seed: int = 0,
        pair_choice: str = "all",
        anchor_negative_weight: float | None = None,
    ):
        """anchor_negative_weight: with pair_choice "coin", the weight of the steps that mix
        anchor-negative pairs (None: `weight`); the official code uses 0.3 there in embed mode."""
        super().__init__()
        if pair_choice not in PAIR_CHOICES:
            raise ValueError(f"pair choice must be one of {', '.join(PAIR_CHOICES)}; got {pair_choice!r}")
        if mode not in MIXUP_MODES:
            raise ValueError(f"mixup mode must be one of {', '.join(MIXUP_MODES)}; got {mode!r}")
        if alpha <= 0:
            raise ValueError(f"Beta(alpha, alpha) needs alpha > 0, got {alpha}")
        self.loss, self.mode, self.alpha, self.weight = loss, mode, alpha, weight
        if negatives_per_anchor == "auto":
            negatives_per_anchor = DEFAULT_NEGATIVES_PER_ANCHOR.get(mode)
        self.negatives_per_anchor = negatives_per_anchor
        self.pair_choice = pair_choice
        self.anchor_negative_weight = weight if anchor_negative_weight is None else anchor_negative_weight
        self._rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        """Restart the lambda stream (the trainer does so every epoch, for exact resumes)."""
        self._rng.seed(seed)

    def sample_lambda(self) -> float:
        return self._rng.betavariate(self.alpha, self.alpha)

    def forward(self, model: SplitModel, images: Tensor, labels: Tensor, lam: float | None = None) -> MetrixOutput:
        features = model.features(images)
        embeddings = model.head(features)
        sims = self.loss.similarities(embeddings, labels)
        clean = self.loss.clean(sims)
        zero = clean.new_zeros(())
        if self.mode == "none" or self.weight == 0:
            return MetrixOutput(clean, clean, zero, lam=float("nan"), num_mixes=0)

        lam = self.sample_lambda() if lam is None else float(lam)
        kinds = "both"
        if self.pair_choice == "coin" and self.loss.mix_anchor_positives:
            kinds = "positive-negative" if self._rng.random() < 0.5 else "anchor-negative"
        plan = choose_pairs(
            None,
            labels,
            lam,
            self.negatives_per_anchor,
            self.loss.mix_anchor_positives,
            similarity=sims.within_batch(),
            kinds=kinds,
        )
        if len(plan) == 0:  # e.g. a single-class batch: nothing to mix
            return MetrixOutput(clean, clean, zero, lam=lam, num_mixes=0)

        if self.mode == "input":
            mixed = self.loss.mixed(sims, model.head(model.features(plan.apply(images))), plan)
        elif self.mode == "feature":
            mixed = self.loss.mixed(sims, model.head(plan.apply(features)), plan)
        else:
            mixed = self.loss.mixed_embeddings(sims, plan)
        weight = self.anchor_negative_weight if kinds == "anchor-negative" else self.weight
        return MetrixOutput(clean + weight * mixed, clean, mixed, lam=lam, num_mixes=len(plan))

    def get_extra_state(self) -> dict:
        return {"rng": self._rng.getstate()}

    def set_extra_state(self, state: dict) -> None:
        self._rng.setstate(_as_rng_state(state["rng"]))


def _as_rng_state(state):
    # random.Random.setstate wants tuples; a JSON round trip gives lists.
    version, internal, gauss = state
    return version, tuple(internal), gauss


class EmbeddingOnly(nn.Module):
    """Adapter for precomputed embeddings: features are the embeddings, the head normalises.

    With it, `Metrix(loss, mode="embed")(EmbeddingOnly(), embeddings, labels)` trains any
    embedding producer; feature mixing on it equals embedding mixing.
    """

    def features(self, x: Tensor) -> Tensor:
        return x

    def head(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)
