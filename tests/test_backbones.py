"""The backbone registry, the offline EfficientNet-Lite weights and the embedding model."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metrix.backbones import BackboneError, create_backbone, list_backbones
from metrix.backbones.efficientnet_lite import package_weights
from metrix.model import EmbeddingModel
from metrix.transforms import eval_transform

CUB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cub100"


def test_registry():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet50"} <= set(list_backbones())
    with pytest.raises(BackboneError, match="unknown backbone 'nope'; available: efficientnet_lite0"):
        create_backbone("nope")


@pytest.mark.parametrize("variant, size", [(0, 224), (1, 240), (2, 260)])
def test_lite_weights_load_strictly_offline(variant, size):
    backbone = create_backbone(f"efficientnet_lite{variant}", pretrained=True)
    assert backbone.preprocessing.image_size == size
    weights = package_weights(variant, [len(stage) for stage in backbone.blocks])
    state = backbone.state_dict()
    assert torch.equal(state["conv_stem.weight"], weights["conv_stem.weight"])
    assert torch.equal(state["blocks.5.3.conv_pwl.weight"], weights["blocks.5.3.conv_pwl.weight"])
    with torch.no_grad():
        assert backbone.eval()(torch.zeros(1, 3, size, size)).shape == (
            1,
            1280,
            size // 32 + (size % 32 > 0),
            size // 32 + (size % 32 > 0),
        )


@pytest.mark.skipif(not CUB.is_dir(), reason="needs ../shared/datasets/cub100")
def test_pretrained_lite0_sees_birds():
    """The renamed weights are the real ImageNet ones: bird crops land in ImageNet's bird classes."""
    import timm
    from PIL import Image

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(package_weights(0, [len(stage) for stage in net.blocks]))
    transform = eval_transform(create_backbone("efficientnet_lite0", pretrained=False).preprocessing)
    images = sorted(p for d in sorted(CUB.iterdir())[:8] for p in sorted(d.iterdir())[:1])
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        top = net.eval()(batch).argmax(1)
    birds = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))
    assert sum(int(c) in birds for c in top) >= 6, top.tolist()


def test_resnet50_offline_message_or_weights():
    try:
        create_backbone("resnet50", pretrained=True)
    except BackboneError as error:
        assert "--no-pretrained" in str(error) and "\n" not in str(error)
    assert create_backbone("resnet50", pretrained=False).num_features == 2048


def test_embedding_model_split_and_head():
    torch.manual_seed(0)
    model = EmbeddingModel.create("efficientnet_lite0", embedding_size=64, pretrained=False).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = model.features(images)
        out = model.head(features)
        assert torch.allclose(out, model(images))
        pooled = features.mean((2, 3)) + features.amax((2, 3))
        assert torch.allclose(out, F.normalize(model.embedding_head.linear(pooled), dim=1), atol=1e-6)
    assert out.shape == (3, 64) and torch.allclose(out.norm(dim=1), torch.ones(3))
