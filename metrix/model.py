"""The embedding model: a backbone's last features, their pooling (the paper's global average +
global max for a CNN, the family's own for a ViT: metrix.backbones), then the head: linear to the
embedding size and L2 normalisation.

`features` and `head` are the split Metrix feature mixing needs (metrix.mixup.SplitModel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Backbone, create_backbone


class EmbeddingHead(nn.Module):
    def __init__(self, in_features: int, embedding_size: int):
        super().__init__()
        self.linear = nn.Linear(in_features, embedding_size)
        nn.init.kaiming_normal_(self.linear.weight, mode="fan_out")
        nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.linear(pooled), dim=1)


@torch.no_grad()
def init_head_with_pca(head: EmbeddingHead, pooled: Tensor) -> None:
    """Start the head as the PCA projection of the pooled features [N, C] (top embedding_size
    directions, centred), so the untrained model already embeds like the pretrained backbone.
    Directions beyond the data's rank keep their random initialisation."""
    mean = pooled.mean(dim=0)
    _, _, directions = torch.linalg.svd(pooled - mean, full_matrices=False)
    rows = min(head.linear.out_features, directions.shape[0])
    head.linear.weight[:rows] = directions[:rows]
    head.linear.bias.copy_(-head.linear.weight @ mean)


class EmbeddingModel(nn.Module):
    def __init__(self, backbone: Backbone, embedding_size: int = 512):
        super().__init__()
        self.backbone = backbone
        self.embedding_head = EmbeddingHead(backbone.num_features, embedding_size)
        self.embedding_size = embedding_size

    @classmethod
    def create(
        cls,
        backbone: str,
        embedding_size: int = 512,
        pretrained: bool = True,
        image_size: int | None = None,
        weights: str | None = None,
    ) -> "EmbeddingModel":
        return cls(create_backbone(backbone, pretrained, image_size, weights), embedding_size)

    @property
    def preprocessing(self):
        return self.backbone.preprocessing

    def features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def head(self, features: Tensor) -> Tensor:
        return self.embedding_head(self.backbone.pool(features))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    def with_cells(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(embeddings [B, D], cell embeddings [B, h, w, D]): each location of the last feature map
        embedded as if it were the whole picture (Backbone.pool_cells), L2-normalised."""
        features = self.features(images)
        cells = self.backbone.pool_cells(features)
        return self.head(features), F.normalize(self.embedding_head.linear(cells), dim=-1)

    def forward_from(self, inputs: Tensor, start: int) -> Tensor:
        """The embedding of `inputs` to backbone stage `start` (cached frozen-stage outputs)."""
        return self.head(self.backbone.features_from(inputs, start))


class PooledBackbone(nn.Module):
    """The untrained floor: a pretrained backbone's GAP + GMP features, L2-normalised, no head."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.embedding_size = backbone.num_features

    @property
    def preprocessing(self):
        return self.backbone.preprocessing

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_from(images, 0)

    def forward_from(self, inputs: Tensor, start: int) -> Tensor:
        return F.normalize(self.backbone.pool(self.backbone.features_from(inputs, start)), dim=1)

    def with_cells(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """As EmbeddingModel.with_cells, without a head."""
        features = self.backbone(images)
        return (
            F.normalize(self.backbone.pool(features), dim=1),
            F.normalize(self.backbone.pool_cells(features), dim=-1),
        )


class BFloat16Features(nn.Module):
    """A split model whose backbone runs under bfloat16 autocast; the head, the mixes and the loss
    stay in fp32 (MS's exp(50 s) would amplify bfloat16's rounding of the similarities)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def features(self, inputs: Tensor) -> Tensor:
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
            return self.model.features(inputs).float()

    def head(self, features: Tensor) -> Tensor:
        return self.model.head(features)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm statistics and affine parameters fixed (the paper does so on CUB and Cars).
    Call after every `.train()`, which would switch the layers back to batch statistics."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


@torch.no_grad()
def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
