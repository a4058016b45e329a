"""Image transforms from a backbone's Preprocessing: the paper's training augmentation
(RandomResizedCrop + horizontal flip, the flip left out where mirror images are other classes:
metrix.training.flip_check) and the evaluation resize + centre crop."""

from __future__ import annotations

from torchvision import transforms as T

from .backbones import Preprocessing

INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def train_transform(pre: Preprocessing, flip: bool = True) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(pre.image_size, interpolation=INTERPOLATION[pre.interpolation], antialias=True),
            *([T.RandomHorizontalFlip()] if flip else []),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def eval_transform(pre: Preprocessing) -> T.Compose:
    return T.Compose(
        [
            T.Resize(pre.resize_size, interpolation=INTERPOLATION[pre.interpolation], antialias=True),
            T.CenterCrop(pre.image_size),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )
