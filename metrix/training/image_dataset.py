"""A torch Dataset over (path, label) samples. An image that fails to decode is reported once,
by name, and replaced by another image of the same class, so one bad file never stops training.

With `seed` set, each sample's random augmentation is drawn from (seed, index): the same image
gets the same crop whichever process or loader worker reads it. An index of N or more (N
samples) is sample index % N with a crop of its own: a sampler's repeat of an image
(metrix.training.sampler.DistinctRepeats). With `images` (DecodedImages of the same samples) pixels come
from memory instead of the files. An image that is its own class (training without labels) is
replaced by the next decodable image of any class."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..datasets.base import Sample
from ..images import ImageDecodeError, open_rgb
from .decoded_images import DecodedImages


class ImageDataset(Dataset):
    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable,
        label_map: dict[int, int] | None = None,
        seed: int | None = None,
        images: DecodedImages | None = None,
    ):
        self.samples = list(samples)
        self.images = images
        self.seed = seed
        self.transform = transform
        self.label_map = label_map
        self.by_label = defaultdict(list)
        for index, sample in enumerate(self.samples):
            self.by_label[sample.label].append(index)
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int) -> int:
        label = self.samples[index].label
        return self.label_map[label] if self.label_map is not None else label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        seed_index, index = index, index % len(self.samples)
        for candidate in self._candidates(index):
            try:
                image = (
                    self.images.open(candidate) if self.images is not None else open_rgb(self.samples[candidate].path)
                )
            except ImageDecodeError as error:
                if candidate not in self.bad:
                    self.bad.add(candidate)
                    warnings.warn(f"skipping unreadable image {error}", stacklevel=2)
                continue
            if self.seed is None:
                return self.transform(image), self.label(index)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + seed_index)
                return self.transform(image), self.label(index)
        raise ImageDecodeError(self.samples[index].path, "no image of this class can be decoded")

    def _candidates(self, index: int):
        yield index
        same_class = self.by_label[self.samples[index].label]
        start = same_class.index(index)
        yield from (same_class[(start + i) % len(same_class)] for i in range(1, len(same_class)))
        if len(same_class) == 1:
            yield from ((index + i) % len(self.samples) for i in range(1, len(self.samples)))
