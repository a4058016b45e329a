"""A small backbone registry in the style of timm's: `@register_backbone` on a factory,
`create_backbone(name, pretrained=...)` to build one, `list_backbones()` to see them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor, nn

#: `--backbone timm:NAME` builds any timm model (metrix.backbones.timm_backbone).
TIMM_PREFIX = "timm:"


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


def gap_gmp(features: Tensor) -> Tensor:
    """The paper's pooling of a feature map [B, C, h, w]: global average + global max, summed.
    max() rather than amax(): its backward is a scatter to one index, where amax's compares the
    whole map with the maximum, several times slower on the large batches feature mixing makes."""
    return features.mean(dim=(2, 3)) + features.flatten(2).max(dim=2).values


class Backbone(nn.Module):
    """A feature extractor: images [B, 3, H, W] -> its last features (a CNN's feature map
    [B, num_features, h, w], a ViT's tokens [B, N, num_features]), and their pooling to
    [B, num_features]."""

    num_features: int
    preprocessing: Preprocessing

    def forward(self, images: Tensor) -> Tensor:
        return self.run_stages(images)

    def pool(self, features: Tensor) -> Tensor:
        return gap_gmp(features)

    def pool_cells(self, features: Tensor) -> Tensor:
        """Each location of the last features pooled as if it were the whole picture: [B, h, w, C].
        A uniform map pools to what a 1 x 1 map does, so each cell goes through `pool` alone; what
        the head makes of it says which parts of a picture look like another picture ("why this
        match", export/explain.py)."""
        b, c, h, w = features.shape
        return self.pool(features.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)).reshape(b, h, w, -1)

    def pooling_parameters(self) -> list[nn.Parameter]:
        """Parameters outside every stage (a ViT's attention pooling or final norm): they train
        with the last stage."""
        in_stages = {id(p) for stage in self.stages() for p in stage.parameters()}
        return [p for p in self.parameters() if id(p) not in in_stages]

    def stages(self) -> list[nn.Module]:
        """The backbone as a sequence of modules from input to last feature map: the units that
        can be frozen (and cached) from the start, or trained at the end."""
        raise NotImplementedError

    def run_stages(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        for stage in self.stages()[start:stop]:
            x = stage(x)
        return x

    def features_from(self, x: Tensor, start: int) -> Tensor:
        """The last features from the output of stage `start - 1` (the images for 0)."""
        return self(x) if start == 0 else self.run_stages(x, start)


_REGISTRY: dict[str, Callable[..., Backbone]] = {}
_LOCAL_WEIGHTS: dict[str, Callable[[], Path | None]] = {}


def register_backbone(factory=None, *, local_weights: Callable[[], Path | None] | None = None):
    """`@register_backbone`, or `@register_backbone(local_weights=f)` where f() finds the
    pretrained weights on this machine (None: they would be downloaded)."""

    def register(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[factory.__name__] = factory
        if local_weights is not None:
            _LOCAL_WEIGHTS[factory.__name__] = local_weights
        return factory

    return register(factory) if factory is not None else register


def local_weights(name: str) -> Path | None:
    """Where `name`'s pretrained weights are on this machine, or None where a first use downloads them."""
    if name.startswith(TIMM_PREFIX):
        from .timm_backbone import cached_weights, pretrained_config

        return cached_weights(pretrained_config(name.removeprefix(TIMM_PREFIX)))
    _import_builtin_backbones()
    return _LOCAL_WEIGHTS[name]() if name in _LOCAL_WEIGHTS else None


def list_backbones() -> list[str]:
    """The registered names; `timm:NAME` builds any timm model besides."""
    _import_builtin_backbones()
    return sorted(_REGISTRY)


def create_backbone(
    name: str, pretrained: bool = True, image_size: int | None = None, weights: str | None = None
) -> Backbone:
    """A registered backbone or `timm:NAME`, at `image_size` (None: its own). `weights`: a file
    of pretrained weights for a timm model instead of its download."""
    if name.startswith(TIMM_PREFIX):
        from .timm_backbone import TimmBackbone

        return TimmBackbone(name.removeprefix(TIMM_PREFIX), pretrained, image_size, weights)
    _import_builtin_backbones()
    if name not in _REGISTRY:
        raise BackboneError(
            f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}, or timm:NAME for any timm model"
        )
    if weights:
        raise BackboneError(f"--weights applies to timm:NAME backbones; {name} has its own weights")
    backbone = _REGISTRY[name](pretrained=pretrained)
    if image_size is not None:
        backbone.preprocessing = backbone.preprocessing.with_size(image_size)
    return backbone


def _import_builtin_backbones() -> None:
    # Imported on first use, so `import metrix` does not pull in timm or torchvision.
    from . import efficientnet_lite, resnet  # noqa: F401
