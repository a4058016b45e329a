"""The generic form every Metrix loss is written in (docs/metrix.md, METRIX.md section 1).

For anchors A and candidates X with soft labels y in [0, 1]:

    l(a) = tau( sigma+( sum_x y * rho+(s(a, x)) ) + sigma-( sum_x (1 - y) * rho-(s(a, x)) ) )

A loss only says what rho, sigma and the reduction are (`reduce`); this base builds the
similarities and the positive / negative weights. Clean labels are the special case y in {0, 1};
Metrix mixed examples carry soft labels and go through exactly the same `reduce`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pairs import MixPlan

# Keeps the norm of a mix of two opposite unit vectors (lam = 1/2) away from 0.
_MIN_SQUARED_NORM = 1e-24


@dataclass(frozen=True)
class Similarities:
    """Cosine similarities of a batch's anchors to its examples, computed once per step and
    shared by the clean loss, the pair chooser and the mixed losses."""

    anchors: Tensor  # [A, D], L2-normalised: the batch itself, or a loss's proxies
    embeddings: Tensor  # [N, D], L2-normalised
    to_batch: Tensor  # [A, N]
    anchor_labels: Tensor  # [A]
    labels: Tensor  # [N]
    anchors_are_batch: bool

    def within_batch(self) -> Tensor:
        """[N, N] similarities among the examples (the anchors' own when they are the batch)."""
        return self.to_batch if self.anchors_are_batch else self.embeddings @ self.embeddings.T


class MetricLoss(nn.Module):
    """Base class: clean loss on a labelled batch, and the same loss with soft labels."""

    #: How Metrix picks pairs for this loss (metrix.pairs.choose_pairs): True mixes each anchor's
    #: positives with its hardest negatives; a loss whose anchors are not examples says False.
    mix_anchor_positives = True

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Clean loss: binary labels, every other example of the batch a candidate."""
        return self.clean(self.similarities(embeddings, labels))

    def similarities(self, embeddings: Tensor, labels: Tensor) -> Similarities:
        check_batch(embeddings, labels)
        anchors, anchor_labels = self.anchors(embeddings, labels)
        e = F.normalize(embeddings, dim=1)
        anchors_are_batch = anchors is embeddings
        a = e if anchors_are_batch else F.normalize(anchors, dim=1)
        return Similarities(a, e, a @ e.T, anchor_labels, labels, anchors_are_batch)

    def clean(self, sims: Similarities) -> Tensor:
        y = (sims.anchor_labels[:, None] == sims.labels[None, :]).to(sims.to_batch.dtype)
        return self._loss(sims.to_batch, y, self.clean_candidates(sims), mixed=False)

    def mixed(self, sims: Similarities, mixed: Tensor, plan: MixPlan) -> Tensor:
        """Metrix loss on mixed examples [T, D] (mixed inputs or feature maps, encoded)."""
        index, valid = self.mixed_candidates(plan, sims.anchors.shape[0])
        mixed = F.normalize(mixed, dim=1)
        if index is None:  # every anchor against every mix
            sim = sims.anchors @ mixed.T
        else:  # each anchor against its own few mixes: [A, D] x [A, M, D]
            picked = mixed.index_select(0, index.flatten()).view(*index.shape, -1)
            sim = torch.einsum("ad,amd->am", sims.anchors, picked)
        return self._loss(sim, plan.soft_labels(sims.anchor_labels, sims.labels, index, sim.dtype), valid, mixed=True)

    def mixed_embeddings(self, sims: Similarities, plan: MixPlan) -> Tensor:
        """Metrix loss on mixed embeddings normalise(lam e_i + (1 - lam) e_j), in closed form:
        for unit vectors, s(a, mix) = (lam s(a, e_i) + (1 - lam) s(a, e_j)) / |lam e_i + (1 - lam) e_j|
        and |.|^2 = lam^2 + (1 - lam)^2 + 2 lam (1 - lam) s(e_i, e_j), so no mixed vector is built."""
        index, valid = self.mixed_candidates(plan, sims.anchors.shape[0])
        own, other = plan.sources[:, 0], plan.sources[:, 1]
        lam = plan.lam
        if sims.anchors_are_batch:
            pair_sim = sims.to_batch.flatten().index_select(0, own * sims.labels.shape[0] + other)
        else:
            pair_sim = (sims.embeddings.index_select(0, own) * sims.embeddings.index_select(0, other)).sum(dim=1)
        norm = (lam**2 + (1 - lam) ** 2 + 2 * lam * (1 - lam) * pair_sim).clamp_min(_MIN_SQUARED_NORM).sqrt()
        to_batch = sims.to_batch
        if index is None:  # every anchor against every mix: one small matmul
            sim = (to_batch @ plan.mixing_matrix(to_batch.shape[1], to_batch.dtype)) / norm
        else:  # each anchor against its own few mixes
            sim = (lam * to_batch.gather(1, own[index]) + (1 - lam) * to_batch.gather(1, other[index])) / norm[index]
        return self._loss(sim, plan.soft_labels(sims.anchor_labels, sims.labels, index, sim.dtype), valid, mixed=True)

    def anchors(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The anchors and their class labels: the batch itself unless a loss overrides it."""
        return embeddings, labels

    def clean_candidates(self, sims: Similarities) -> Tensor:
        """Which (anchor, example) pairs the clean loss uses: all but self-pairs."""
        n = sims.labels.shape[0]
        return ~torch.eye(n, dtype=torch.bool, device=sims.labels.device)

    def mixed_candidates(self, plan: MixPlan, num_anchors: int) -> tuple[Tensor | None, Tensor]:
        """Which mixed examples each anchor uses, as (index [A, M], valid [A, M]): the ones
        chosen for it. index None means every anchor uses every mix (valid [A, T])."""
        return plan.per_anchor(num_anchors)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups for the loss's own parameters (none unless overridden)."""
        return []

    def soft_loss(self, anchors: Tensor, candidates: Tensor, y: Tensor, valid: Tensor, mixed: bool = False) -> Tensor:
        """The generic form on anchors [A, D], candidates [C, D], soft labels y [A, C] in [0, 1]
        and valid [A, C] marking the pairs that take part; `mixed` says the candidates are mixes."""
        if y.shape != valid.shape or y.shape != (anchors.shape[0], candidates.shape[0]):
            raise ValueError(
                f"soft labels {tuple(y.shape)} and mask {tuple(valid.shape)} must both be "
                f"(anchors, candidates) = ({anchors.shape[0]}, {candidates.shape[0]})"
            )
        check_soft_labels(y)
        sim = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T
        return self._loss(sim, y, valid, mixed)

    def _loss(self, sim: Tensor, y: Tensor, valid: Tensor, mixed: bool) -> Tensor:
        valid = valid.to(sim.dtype)
        return self.reduce(sim, valid * y, valid * (1 - y), mixed)

    def reduce(self, sim: Tensor, pos_weight: Tensor, neg_weight: Tensor, mixed: bool) -> Tensor:
        """rho, sigma and the reduction of one loss. sim, pos_weight, neg_weight: [A, C]."""
        raise NotImplementedError


def check_batch(embeddings: Tensor, labels: Tensor) -> None:
    """Reject input that would give a silently meaningless loss."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (batch, dim), got shape {tuple(embeddings.shape)}")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one label per embedding: got {tuple(labels.shape)} labels "
            f"for {embeddings.shape[0]} embeddings"
        )
    if embeddings.shape[0] < 2:
        raise ValueError(f"a metric loss needs a batch of at least 2 examples, got {embeddings.shape[0]}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")


def check_soft_labels(y: Tensor) -> None:
    if not ((y >= 0) & (y <= 1)).all():
        raise ValueError(f"soft labels must lie in [0, 1], got values in [{y.min().item():g}, {y.max().item():g}]")


def log1p_weighted_sum_exp(logits: Tensor, weight: Tensor, dim: int = 1) -> Tensor:
    """log(1 + sum_i weight_i * exp(logits_i)) along `dim`, computed stably.

    Entries with weight 0 drop out exactly (their log-weight is -inf), so a row with no
    positive weight gives log(1) = 0, as the clean losses do for an anchor without positives.
    """
    log_w = torch.where(weight > 0, weight.clamp_min(torch.finfo(weight.dtype).tiny).log(), -torch.inf)
    terms = torch.where(weight > 0, logits + log_w, -torch.inf)
    zero = torch.zeros_like(terms.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([terms, zero], dim=dim), dim=dim)
