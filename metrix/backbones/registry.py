"""A small backbone registry in the style of timm's: `@register_backbone` on a factory,
`create_backbone(name, pretrained=...)` to build one, `list_backbones()` to see them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from torch import Tensor, nn


class BackboneError(ValueError):
    """A backbone that cannot be built; the message is one line saying what to do."""


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone: RGB in [0, 1], resize the short side to
    image_size / crop_fraction, centre-crop image_size, then (x - mean) / std."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"

    @property
    def resize_size(self) -> int:
        return round(self.image_size / self.crop_fraction)

    def with_size(self, image_size: int) -> "Preprocessing":
        return Preprocessing(image_size, self.mean, self.std, self.crop_fraction, self.interpolation)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(d["image_size"], tuple(d["mean"]), tuple(d["std"]), d["crop_fraction"], d["interpolation"])


class Backbone(nn.Module):
    """A feature extractor: images [B, 3, H, W] -> last feature map [B, num_features, h, w]."""

    num_features: int
    preprocessing: Preprocessing

    def forward(self, images: Tensor) -> Tensor:
        return self.run_stages(images)

    def stages(self) -> list[nn.Module]:
        """The backbone as a sequence of modules from input to last feature map: the units that
        can be frozen (and cached) from the start, or trained at the end."""
        raise NotImplementedError

    def run_stages(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        for stage in self.stages()[start:stop]:
            x = stage(x)
        return x


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
    _REGISTRY[factory.__name__] = factory
    return factory


def list_backbones() -> list[str]:
    _import_builtin_backbones()
    return sorted(_REGISTRY)


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    _import_builtin_backbones()
    if name not in _REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](pretrained=pretrained)


def _import_builtin_backbones() -> None:
    # Imported on first use, so `import metrix` does not pull in timm or torchvision.
    from . import efficientnet_lite, resnet  # noqa: F401
