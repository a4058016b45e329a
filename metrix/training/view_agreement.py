"""Validation without labels: view agreement, the share of augmented views whose nearest
neighbour (among two views of every held-out image) is the other view of the same image.

It is instance retrieval's R@1: it rises as the embedding learns what survives augmentation,
which is what the training without labels teaches, so it chooses the epoch where no class
exists to choose it with. How well it tracks retrieval of real classes is measured in
docs/benchmarks.md (issue 17).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..datasets.base import Sample
from .stage_cache import frozen_stage_outputs

#: The two views' augmentation seeds: fixed, so every epoch and every run sees the same views.
VIEW_SEEDS = (7_001, 7_002)


def view_inputs(model, start: int, samples: list[Sample], **options) -> Tensor:
    """The inputs to stage `start` for two augmented views of each sample: [M, 2, ...] float32."""
    return frozen_stage_outputs(
        model.backbone, start, samples, VIEW_SEEDS, dtype=torch.float32, persist=False, **options
    )


@torch.no_grad()
def embed_views(model, inputs: Tensor, start: int, batch_size: int = 64, channels_last: bool = False) -> Tensor:
    was_training = model.training
    model.eval()
    flat = inputs.flatten(0, 1)
    chunks = []
    for i in range(0, len(flat), batch_size):
        batch = flat[i : i + batch_size]
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        chunks.append(model.forward_from(batch, start).float())
    model.train(was_training)
    return torch.cat(chunks).unflatten(0, inputs.shape[:2])


@torch.no_grad()
def view_agreement(embeddings: Tensor, chunk: int = 2048) -> float:
    """Percent of views whose sibling is strictly more similar than every other view;
    `embeddings` [M, 2, D]."""
    if embeddings.shape[0] < 2 or embeddings.shape[1] != 2:
        raise ValueError(f"need two views of at least two images, got {tuple(embeddings.shape)}")
    flat = F.normalize(embeddings.flatten(0, 1).float(), dim=1)
    sibling = torch.arange(len(flat)) ^ 1  # views 2m and 2m + 1 belong to image m
    agreed = 0
    for start in range(0, len(flat), chunk):
        rows = torch.arange(start, min(start + chunk, len(flat)))
        similarity = flat[rows] @ flat.T
        to_sibling = similarity[torch.arange(len(rows)), sibling[rows]].clone()
        similarity[torch.arange(len(rows)), rows] = -torch.inf
        similarity[torch.arange(len(rows)), sibling[rows]] = -torch.inf
        agreed += int((to_sibling > similarity.max(dim=1).values).sum())
    return 100.0 * agreed / len(flat)
