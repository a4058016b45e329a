"""Outputs of a backbone's frozen first stages, computed once and kept on disk.

Stages that never train give the same output for the same image and transform, so a CPU run
computes them once: for V augmented views of each training image, or for the plain evaluation
view of validation and test images. Another run (a different loss, mixing mode or evaluation)
on the same data, seed and frozen weights reads them back instead of decoding again.

A file is named by a hash of everything that determines it: the frozen stages' weights and
buffers, the preprocessing, the transform and its seeds, and each image's path, size and mtime.
A changed image or weight gives a new name, never a stale read. Files are written to a temporary
name and renamed, so a killed run leaves no half-written cache. Location: $METRIX_CACHE/stages
(default ~/.cache/metrix/stages); delete the folder to reclaim the space.

Training on the cache (the cpu recipe): FeatureCache holds the outputs for V augmented views of
every training image (float16, in memory) and gives each epoch one view of each image, drawn from
(seed, epoch); CachedTail runs the remaining stages and the head on them.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..cache import cache_root
from ..datasets.base import Sample
from ..files import staged
from ..transforms import eval_transform, train_transform
from .image_dataset import ImageDataset

FORMAT = "metrix-stage-cache/1"


def view_seeds(views: int, seed: int) -> list[int]:
    """The augmentation seed of each cached training view."""
    return [seed * 131 + view for view in range(views)]


@torch.no_grad()
def frozen_stage_outputs(
    backbone,
    start: int,
    samples: Sequence[Sample],
    seeds: Sequence[int | None] = (None,),
    *,
    num_workers: int = 0,
    batch_size: int = 64,
    progress=None,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float16,
    persist: bool = True,
    flip: bool = True,
) -> Tensor:
    """Outputs of backbone stages [0, start) as [N, V, C, h, w] of `dtype`: one view per entry of
    `seeds`, the seeded training augmentation, or the evaluation transform for None. Training
    views are float16 (half the memory; augmentation noise dwarfs the rounding); evaluation asks
    for float32, so its embeddings are those of the whole model."""
    key = _key(backbone, start, samples, seeds, dtype, flip)
    path = cache_root() / "stages" / f"{key}.pt" if persist else None
    if path is not None and path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            path.unlink(missing_ok=True)  # unreadable (a disk error): compute it again
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    per_view = []
    for seed in seeds:
        pre = backbone.preprocessing
        transform = eval_transform(pre) if seed is None else train_transform(pre, flip)
        loader = DataLoader(ImageDataset(samples, transform, seed=seed), batch_size=batch_size, num_workers=num_workers)
        chunks = []
        for images, _ in loader:
            images = images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            chunks.append(backbone.run_stages(images, 0, start).to(dtype).cpu().contiguous())
            if progress is not None:
                progress(len(images))
        per_view.append(torch.cat(chunks))
    backbone.train(was_training)
    outputs = torch.stack(per_view, dim=1)
    if path is not None:
        _save_atomically(outputs, path)
    return outputs


def _key(
    backbone, start: int, samples: Sequence[Sample], seeds: Sequence[int | None], dtype: torch.dtype, flip: bool
) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "format": FORMAT,
                "start": start,
                "seeds": list(seeds),
                "dtype": str(dtype),
                "flip": flip,
                "preprocessing": backbone.preprocessing.to_dict(),
            }
        ).encode()
    )
    for stage in backbone.stages()[:start]:
        for name, tensor in stage.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for sample in samples:
        path = Path(sample.path)
        try:
            stat = path.stat()
            fingerprint = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:  # gone since the dataset was listed: decoding will substitute another image
            fingerprint = "missing"
        digest.update(f"{path.resolve()}\0{sample.label}\0{fingerprint}\n".encode())
    return digest.hexdigest()[:32]


def _save_atomically(outputs: Tensor, path: Path) -> None:
    with staged(path) as tmp:
        torch.save(outputs, tmp)


class FeatureCache:
    def __init__(self, features: Tensor, labels: Tensor):
        self.features, self.labels = features, labels  # [N, V, C, H, W] float16, [N]

    @property
    def views(self) -> int:
        return self.features.shape[1]

    @classmethod
    def build(
        cls, model, samples: list[Sample], label_map: dict[int, int], start: int, views: int, seed: int, **options
    ) -> "FeatureCache":
        """Outputs of backbone stages [0, start) for `views` augmented views of each sample;
        `options` go to frozen_stage_outputs."""
        features = frozen_stage_outputs(model.backbone, start, samples, view_seeds(views, seed), **options)
        return cls(features, torch.tensor([label_map[s.label] for s in samples]))

    def batch(self, indices: list[int], epoch_seed: int) -> tuple[Tensor, Tensor]:
        """The epoch's view of each image; index + j * N (metrix.training.sampler.DistinctRepeats) is the
        j-th view after it, so an image repeated in a batch comes as distinct views (j < V)."""
        indices = torch.as_tensor(indices)
        index, repeat = indices % len(self.labels), indices // len(self.labels)
        view = torch.randint(self.views, (len(self.labels),), generator=torch.Generator().manual_seed(epoch_seed))
        return self.features[index, (view[index] + repeat) % self.views].float(), self.labels[index]


class CachedTail(nn.Module):
    """A SplitModel over cached inputs: `features` runs the backbone from stage `start` on."""

    def __init__(self, model, start: int):
        super().__init__()
        self.model, self.start = model, start

    def features(self, cached: Tensor) -> Tensor:
        return self.model.backbone.features_from(cached, self.start)

    def head(self, features: Tensor) -> Tensor:
        return self.model.head(features)
