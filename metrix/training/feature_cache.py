"""Training only the last stages of a backbone on CPU: run the frozen first stages once over V
augmented views of every training image, keep their outputs (float16, in memory), and train
the remaining stages and the head on those. Each epoch every image uses one of its V views,
drawn from (seed, epoch)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..datasets.base import Sample
from ..image_dataset import ImageDataset
from ..transforms import train_transform


class FeatureCache:
    def __init__(self, features: Tensor, labels: Tensor):
        self.features, self.labels = features, labels  # [N, V, C, H, W] float16, [N]

    @property
    def views(self) -> int:
        return self.features.shape[1]

    @classmethod
    @torch.no_grad()
    def build(cls, model, samples: list[Sample], label_map: dict[int, int], start: int, views: int, seed: int,
              num_workers: int = 0, batch_size: int = 64, progress=None, channels_last: bool = False) -> "FeatureCache":
        """Outputs of backbone stages [0, start) for `views` augmented views of each sample."""
        was_training = model.training
        model.eval()
        per_view = []
        for view in range(views):
            dataset = ImageDataset(samples, train_transform(model.preprocessing), label_map, seed=seed * 131 + view)
            chunks, labels = [], []
            for images, batch_labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                chunks.append(model.backbone.run_stages(images, 0, start).half())
                labels.append(batch_labels)
                if progress is not None:
                    progress(len(batch_labels))
            per_view.append(torch.cat(chunks))
        model.train(was_training)
        return cls(torch.stack(per_view, dim=1), torch.cat(labels))

    def batch(self, indices: list[int], epoch_seed: int) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        view = torch.randint(self.views, (len(self.labels),), generator=torch.Generator().manual_seed(epoch_seed))
        return self.features[index, view[index]].float(), self.labels[index]


class CachedTail(nn.Module):
    """A SplitModel over cached inputs: `features` runs the backbone from stage `start` on."""

    def __init__(self, model, start: int):
        super().__init__()
        self.model, self.start = model, start

    def features(self, cached: Tensor) -> Tensor:
        return self.model.backbone.run_stages(cached, self.start)

    def head(self, features: Tensor) -> Tensor:
        return self.model.head(features)
