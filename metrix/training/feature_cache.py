"""Training only the last stages of a backbone on CPU: the frozen first stages' outputs for V
augmented views of every training image (float16, in memory, persisted by metrix.stage_cache),
and the remaining stages and the head train on those. Each epoch every image uses one of its V
views, drawn from (seed, epoch)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..datasets.base import Sample
from ..stage_cache import frozen_stage_outputs, view_seeds


class FeatureCache:
    def __init__(self, features: Tensor, labels: Tensor):
        self.features, self.labels = features, labels  # [N, V, C, H, W] float16, [N]

    @property
    def views(self) -> int:
        return self.features.shape[1]

    @classmethod
    def build(cls, model, samples: list[Sample], label_map: dict[int, int], start: int, views: int, seed: int,
              **options) -> "FeatureCache":
        """Outputs of backbone stages [0, start) for `views` augmented views of each sample;
        `options` go to frozen_stage_outputs."""
        features = frozen_stage_outputs(model.backbone, start, samples, view_seeds(views, seed), **options)
        return cls(features, torch.tensor([label_map[s.label] for s in samples]))

    def batch(self, indices: list[int], epoch_seed: int) -> tuple[Tensor, Tensor]:
        """The epoch's view of each image; index + j * N (metrix.sampler.DistinctRepeats) is the
        j-th view after it, so an image repeated in a batch comes as distinct views (j < V)."""
        indices = torch.as_tensor(indices)
        index, repeat = indices % len(self.labels), indices // len(self.labels)
        view = torch.randint(self.views, (len(self.labels),), generator=torch.Generator().manual_seed(epoch_seed))
        return self.features[index, (view[index] + repeat) % self.views].float(), self.labels[index]


class CachedTail(nn.Module):
    """A SplitModel over cached inputs: `features` runs the backbone from stage `start` on."""

    def __init__(self, model, start: int):
        super().__init__()
        self.model, self.start = model, start

    def features(self, cached: Tensor) -> Tensor:
        return self.model.backbone.features_from(cached, self.start)

    def head(self, features: Tensor) -> Tensor:
        return self.model.head(features)
