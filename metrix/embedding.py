"""Embed a list of samples with a model, in evaluation mode and batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .datasets.base import Sample
from .image_dataset import ImageDataset
from .transforms import eval_transform


@torch.no_grad()
def embed_samples(
    model, samples: Sequence[Sample], batch_size: int = 64, num_workers: int = 0, device: str = "cpu",
    channels_last: bool = False, progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (embeddings [N, D] float32, labels [N]); unreadable images are replaced by another
    image of their class (see ImageDataset), so rows stay aligned with `samples`."""
    dataset = ImageDataset(samples, eval_transform(model.preprocessing))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    was_training = model.training
    model.eval()
    if channels_last:  # inputs and weights must share the layout, or every conv converts
        model.to(memory_format=torch.channels_last)
    chunks, labels = [], []
    for images, batch_labels in loader:
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        chunks.append(model(images).float().cpu().numpy())
        labels.append(batch_labels.numpy())
        if progress is not None:
            progress(len(batch_labels))
    model.train(was_training)
    dim = getattr(model, "embedding_size", 0)
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), (
        np.concatenate(labels) if labels else np.zeros(0, np.int64)
    )
