"""ResNet-50, the paper's backbone, from torchvision. Its ImageNet weights are downloaded by
torchvision on first use; offline, that fails with a message that says so."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .registry import Backbone, BackboneError, Preprocessing, register_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet50(Backbone):
    def __init__(self, pretrained: bool):
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
        try:
            net = resnet50(weights=weights)
        except Exception as error:  # torchvision raises URLError, OSError, RuntimeError... offline
            raise BackboneError(
                f"could not get torchvision's ImageNet weights for resnet50 ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:120]}); connect to the internet once, or pass --no-pretrained"
            ) from None
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = 2048
        # Paper protocol: Resize(256) + CenterCrop(224).
        self.preprocessing = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, 224 / 256, "bilinear")

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


def _cached_torchvision_weights() -> Path | None:
    import torch
    from torchvision.models import ResNet50_Weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet50_Weights.IMAGENET1K_V1.url).name
    return path if path.is_file() else None


@register_backbone(local_weights=_cached_torchvision_weights)
def resnet50(pretrained: bool = True) -> Backbone:
    return ResNet50(pretrained)
