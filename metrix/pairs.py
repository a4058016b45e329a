"""Which examples Metrix mixes, and with what labels (docs/metrix.md).

For each anchor a: its k hardest negatives n (highest clean cosine similarity, never of a's class).
An anchor with positives gets the positive-negative mixes (p, n) for every positive p; an anchor
without a positive in the batch gets the anchor-negative mixes (a, n). For proxy anchors every
example is a positive of its proxy, and is mixed with its own k hardest negatives. A (p, n) pair
chosen by several anchors is mixed once and shared. `kinds` keeps only one of the two kinds (the
official code's per-iteration coin flip between them). Everything is tensor ops: no loop over
anchors or pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PAIR_KINDS = ("both", "positive-negative", "anchor-negative")


@dataclass(frozen=True)
class MixPlan:
    """Mixed example t is lam * x[sources[t, 0]] + (1 - lam) * x[sources[t, 1]].

    sources[t, 0] shares the class of the anchors that chose it (the "own" side), sources[t, 1]
    is their negative. Relation r says anchor `anchors[r]` uses mixed example `mixes[r]`.
    """

    lam: float
    sources: Tensor  # [T, 2] int64
    anchors: Tensor  # [R] int64
    mixes: Tensor  # [R] int64

    def __len__(self) -> int:
        return self.sources.shape[0]

    def apply(self, x: Tensor) -> Tensor:
        """Mix rows of x (images, feature maps or embeddings) along the first axis."""
        # Scale the B rows before gathering the (many more) mixes: the same numbers, fewer products.
        own = (self.lam * x).index_select(0, self.sources[:, 0])
        return own + ((1 - self.lam) * x).index_select(0, self.sources[:, 1])

    def per_anchor(self, num_anchors: int) -> tuple[Tensor, Tensor]:
        """index [A, M]: the mixed examples each anchor uses, padded to the largest count M;
        valid [A, M]: which entries are real. Anchors only see their own few mixes, so the mixed
        loss works on [A, M] instead of every anchor against every mix."""
        counts = torch.bincount(self.anchors, minlength=num_anchors)
        width = int(counts.max()) if len(self.anchors) else 0
        order = torch.argsort(self.anchors, stable=True)
        anchors, mixes = self.anchors[order], self.mixes[order]
        slot = torch.arange(len(anchors), device=anchors.device) - (counts.cumsum(0) - counts)[anchors]
        index = torch.zeros(num_anchors, width, dtype=torch.long, device=anchors.device)
        valid = torch.zeros(num_anchors, width, dtype=torch.bool, device=anchors.device)
        index[anchors, slot] = mixes
        valid[anchors, slot] = True
        return index, valid

    def mixing_matrix(self, n: int, dtype: torch.dtype) -> Tensor:
        """[N, T] with lam at (own_t, t) and 1 - lam at (other_t, t): x.T @ it mixes x's rows."""
        t = torch.arange(len(self), device=self.sources.device)
        matrix = torch.zeros(n, len(self), dtype=dtype, device=self.sources.device)
        matrix[self.sources[:, 0], t] = self.lam
        matrix[self.sources[:, 1], t] = 1 - self.lam
        return matrix

    def soft_labels(self, anchor_labels: Tensor, labels: Tensor, index: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The mixed label of each mixed example for each anchor's class,
        lam * [class(x) = c] + (1 - lam) * [class(x') = c]: [A, M] for the mixes index[a, m],
        or [A, T] for every mix when index is None."""
        own, other = labels[self.sources[:, 0]], labels[self.sources[:, 1]]
        if index is not None:
            own, other = own[index], other[index]
        is_own = (anchor_labels[:, None] == own).to(dtype)
        is_other = (anchor_labels[:, None] == other).to(dtype)
        return self.lam * is_own + (1 - self.lam) * is_other


def choose_pairs(
    embeddings: Tensor | None,
    labels: Tensor,
    lam: float,
    negatives_per_anchor: int | None,
    anchor_positives: bool = True,
    similarity: Tensor | None = None,
    kinds: str = "both",
) -> MixPlan:
    """Choose the mixing pairs from the clean embeddings [N, D] (or their cosine similarity
    matrix [N, N], if already at hand) and labels [N].

    negatives_per_anchor: k hardest negatives per anchor; None takes all of them.
    anchor_positives: False mixes every example with its own negatives (anchor-negative pairs
    only), for losses whose anchors are proxies.
    kinds: "both", "positive-negative" or "anchor-negative": which mixes to make.
    """
    if kinds not in PAIR_KINDS:
        raise ValueError(f"kinds must be one of {', '.join(PAIR_KINDS)}, got {kinds!r}")
    if negatives_per_anchor is not None and negatives_per_anchor < 1:
        raise ValueError(f"negatives_per_anchor must be >= 1 or None, got {negatives_per_anchor}")
    if not 0 <= lam <= 1:
        raise ValueError(f"the mixing coefficient lambda must lie in [0, 1], got {lam}")
    with torch.no_grad():
        n = labels.shape[0]
        if similarity is None:
            e = F.normalize(embeddings.detach(), dim=1)
            similarity = e @ e.T
        sim = similarity.detach()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=labels.device)
        positive = same & ~eye
        has_positive = positive.any(dim=1, keepdim=True) & anchor_positives
        positive_negative = positive & anchor_positives
        anchor_negative = eye & ~has_positive
        own_side = {
            "both": positive_negative | anchor_negative,
            "positive-negative": positive_negative,
            "anchor-negative": anchor_negative,
        }[kinds]

        k = n if negatives_per_anchor is None else min(negatives_per_anchor, n)
        negative_sim, negative = sim.masked_fill(same, -torch.inf).topk(k, dim=1)
        is_negative = negative_sim > -torch.inf  # false where an anchor has fewer than k negatives

        anchor, own, slot = torch.nonzero(own_side[:, :, None] & is_negative[:, None, :], as_tuple=True)
        other = negative[anchor, slot]
        pair_codes, mix = torch.unique(own * n + other, return_inverse=True)
        sources = torch.stack([pair_codes // n, pair_codes % n], dim=1)
    return MixPlan(lam=float(lam), sources=sources, anchors=anchor, mixes=mix)
