"""Training images decoded once. Full fine-tuning draws a fresh random crop of every image each
epoch, and decoding a 500 px JPEG costs more than cropping it: each image is decoded once,
resized so its short side is `short_side` (the evaluation resize, so a centre crop loses
nothing), and kept in memory as uint8 RGB. An unreadable image is remembered and raises
ImageDecodeError when opened, as `open_rgb` does, so ImageDataset's same-class replacement
applies unchanged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from torchvision import transforms as T

from ..datasets.base import Sample
from ..images import ImageDecodeError, decode_rgb
from ..transforms import INTERPOLATION


class DecodedImages:
    def __init__(self, samples: Sequence[Sample], pixels: list[np.ndarray | None], failures: dict[int, str]):
        self.samples, self.pixels, self.failures = list(samples), pixels, failures

    @classmethod
    def decode(
        cls,
        samples: Sequence[Sample],
        short_side: int,
        interpolation: str = "bilinear",
        threads: int = 2,
        progress: Callable[[int], None] | None = None,
    ) -> "DecodedImages":
        resize = T.Resize(short_side, interpolation=INTERPOLATION[interpolation], antialias=True)  # as eval_transform

        def one(sample: Sample) -> np.ndarray | str:
            try:
                image, _ = decode_rgb(sample.path, min_short_side=short_side)
            except ImageDecodeError as error:
                return error.reason
            return np.asarray(resize(image))

        pixels, failures = [], {}
        with ThreadPoolExecutor(max(1, threads)) as pool:  # Pillow decodes and resizes without the GIL
            for index, result in enumerate(pool.map(one, samples)):
                if isinstance(result, str):
                    failures[index] = result
                    result = None
                pixels.append(result)
                if progress is not None:
                    progress(1)
        return cls(samples, pixels, failures)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pixels if p is not None)

    def subset(self, indices: Sequence[int]) -> "DecodedImages":
        return DecodedImages(
            [self.samples[i] for i in indices],
            [self.pixels[i] for i in indices],
            {new: self.failures[old] for new, old in enumerate(indices) if old in self.failures},
        )

    def open(self, index: int) -> Image.Image:
        if index in self.failures:
            raise ImageDecodeError(self.samples[index].path, self.failures[index])
        return Image.fromarray(self.pixels[index])
