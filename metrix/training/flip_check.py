"""Should training flip images left to right? Measured on the data before training.

A horizontal flip tells the model that a picture and its mirror are the same thing: right for
photos of birds or products, wrong where a mirror image is another class (b and d, a clock at 1
and at 11, a left- and a right-facing arrow). The check asks the pretrained model, on the
training and validation classes (never the test classes): does an image's mirror land nearer to
another class than the image itself does?

Each image and its mirror are described by the pretrained backbone's last feature map averaged
to a GRID x GRID grid (a pooled vector would not see a mirror: ImageNet models are trained with
flips). For every image, its nearest other image is found once for the image and once for its
mirror; the mirror's own source is left out of both searches. `worse` counts images whose
nearest neighbour is of their class while their mirror's is not, `better` the reverse. Flips are
turned off when mirrors are confused more often than the images themselves by at least
MIN_EXCESS of the images, and beyond chance (one-sided sign test on worse against better,
p < MAX_P_VALUE): on photos, where mirror images are as natural as the originals, the two
counts balance.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..datasets.base import Sample
from ..transforms import eval_transform
from .image_dataset import ImageDataset

GRID = 3
MAX_CLASSES = 100
MAX_IMAGES = 1000
MIN_PER_CLASS = 10
#: Flips go off when mirrors lose their class this much more often than the images (a share of
#: the images) and the sign test says it is not chance.
MIN_EXCESS = 0.05
MAX_P_VALUE = 0.01
#: The check's figures, beside the run's config.json.
FLIP_CHECK_FILE = "flip_check.json"


@dataclass
class MirrorCheck:
    flip: bool
    images: int
    classes: int
    image_errors: float  # share of images whose nearest other image is of another class
    mirror_errors: float  # the same for their mirrors
    worse: int  # image right, mirror wrong
    better: int  # image wrong, mirror right
    p_value: float

    @property
    def excess(self) -> float:
        return self.mirror_errors - self.image_errors

    def explain(self) -> str:
        figures = (
            f"on {self.images} images of {self.classes} training and validation classes, an image's mirror is "
            f"nearer to another class for {self.mirror_errors:.1%} of them against {self.image_errors:.1%} for "
            f"the images themselves ({self.excess:+.1%}, sign test p = {self.p_value:.2g})"
        )
        if self.flip:
            return f"flips on: mirror images are not confused with other classes ({figures})"
        return f"flips off: mirror images look like other classes ({figures})"

    def to_dict(self) -> dict:
        return {**asdict(self), "excess": self.excess, "min_excess": MIN_EXCESS, "max_p_value": MAX_P_VALUE}


def sample_for_check(samples: list[Sample], seed: int = 0) -> list[Sample]:
    """At most MAX_CLASSES classes (seeded) and about MAX_IMAGES images, at least MIN_PER_CLASS
    per class where a class has them."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    rng = random.Random(seed)
    classes = sorted(by_class)
    rng.shuffle(classes)
    classes = classes[:MAX_CLASSES]
    per_class = max(MIN_PER_CLASS, MAX_IMAGES // max(1, len(classes)))
    chosen = []
    for label in classes:
        members = list(by_class[label])
        rng.shuffle(members)
        chosen += members[:per_class]
    return chosen


@torch.no_grad()
def grid_descriptors(model, samples: list[Sample], device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, mirrors): each a row per sample, the L2-normalised GRID x GRID average of the
    backbone's last feature map."""
    was_training = model.training
    model.eval()
    loader = DataLoader(ImageDataset(samples, eval_transform(model.preprocessing)), batch_size=batch_size)
    images, mirrors = [], []
    for batch, _ in loader:
        batch = batch.to(device)
        for out, inputs in ((images, batch), (mirrors, batch.flip(-1))):
            grid = F.adaptive_avg_pool2d(model.features(inputs).float(), GRID)
            out.append(F.normalize(grid.flatten(1), dim=1))
    model.train(was_training)
    return torch.cat(images), torch.cat(mirrors)


def nearest_is_other_class(queries: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For query i (the image i or its mirror): is the nearest gallery row other than i of another class?"""
    similarity = queries @ gallery.T
    similarity.fill_diagonal_(-math.inf)
    return labels[similarity.argmax(dim=1)] != labels


def sign_test(worse: int, better: int) -> float:
    """One-sided exact binomial p-value of `worse` or more in worse + better even chances."""
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n


def decide(image_wrong: torch.Tensor, mirror_wrong: torch.Tensor, classes: int) -> MirrorCheck:
    worse = int((mirror_wrong & ~image_wrong).sum())
    better = int((image_wrong & ~mirror_wrong).sum())
    images = len(image_wrong)
    p_value = sign_test(worse, better)
    excess = (worse - better) / images
    return MirrorCheck(
        flip=not (excess >= MIN_EXCESS and p_value < MAX_P_VALUE),
        images=images,
        classes=classes,
        image_errors=float(image_wrong.float().mean()),
        mirror_errors=float(mirror_wrong.float().mean()),
        worse=worse,
        better=better,
        p_value=p_value,
    )


def check_mirrors(model, samples: list[Sample], device, seed: int = 0) -> MirrorCheck | None:
    """The check on a sample of `samples` (training and validation images); None when there are
    fewer than two classes with two images each to measure on."""
    chosen = sample_for_check(samples, seed)
    counts: dict[int, int] = defaultdict(int)
    for sample in chosen:
        counts[sample.label] += 1
    if sum(count >= 2 for count in counts.values()) < 2:
        return None
    images, mirrors = grid_descriptors(model, chosen, device)
    labels = torch.tensor([sample.label for sample in chosen], device=images.device)
    image_wrong = nearest_is_other_class(images, images, labels)
    mirror_wrong = nearest_is_other_class(mirrors, images, labels)
    return decide(image_wrong.cpu(), mirror_wrong.cpu(), len(counts))


def choose_flip(model, data, device, seed: int) -> tuple[bool, str, MirrorCheck | None]:
    """(flip, why, the check) for a run that did not say: measured on the training and validation
    classes where they are labelled; flips stay on without labels, which leave no classes to confuse."""
    if not data.labelled:
        return True, "flips on: without labels there are no classes a mirror image could be confused with", None
    with torch.random.fork_rng(devices=[]):  # the run's random stream is the same with and without the check
        check = check_mirrors(model, list(data.train.samples) + list(data.val.samples), device, seed)
    if check is None:
        return True, "flips on: too few classes with two images to measure mirror images on", None
    return check.flip, check.explain(), check


def save_check(run_dir: Path, check: MirrorCheck | None) -> None:
    """RUN_DIR/FLIP_CHECK_FILE: the check's figures, where one was made."""
    if check is not None:
        (run_dir / FLIP_CHECK_FILE).write_text(json.dumps(check.to_dict(), indent=2))
