"""Embed a list of samples with a model, in evaluation mode and batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..datasets.base import Sample
from ..transforms import eval_transform
from .decoded_images import DecodedImages
from .image_dataset import ImageDataset
from .stage_cache import frozen_stage_outputs


@torch.no_grad()
def embed_samples(
    model,
    samples: Sequence[Sample],
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    channels_last: bool = False,
    progress=None,
    frozen_stages: int = 0,
    images: DecodedImages | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (embeddings [N, D] float32, labels [N]); unreadable images are replaced by another
    image of their class (see ImageDataset), so rows stay aligned with `samples`. With
    frozen_stages > 0 the outputs of the model's first, frozen stages come from the stage cache
    (metrix.training.stage_cache) and only the rest of the model runs. `images`: the samples' pixels,
    already decoded."""
    was_training = model.training
    model.eval()
    if channels_last:  # inputs and weights must share the layout, or every conv converts
        model.to(memory_format=torch.channels_last)
    if frozen_stages:
        cached = frozen_stage_outputs(
            model.backbone,
            frozen_stages,
            samples,
            num_workers=num_workers,
            batch_size=batch_size,
            channels_last=channels_last,
            dtype=torch.float32,
        )[:, 0]
        batches = (
            (cached[i : i + batch_size], len(cached[i : i + batch_size])) for i in range(0, len(cached), batch_size)
        )
    else:
        loader = DataLoader(
            ImageDataset(samples, eval_transform(model.preprocessing), images=images),
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle=False,
        )
        batches = ((batch, len(batch)) for batch, _ in loader)
    chunks = []
    for inputs, count in batches:
        inputs = inputs.to(device)
        if channels_last and inputs.ndim == 4:  # not cached ViT tokens
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        chunks.append(model.forward_from(inputs, frozen_stages).float().cpu().numpy())
        if progress is not None:
            progress(count)
    model.train(was_training)
    dim = getattr(model, "embedding_size", 0)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), labels
