"""Flips in the training augmentation: the check that turns them off where mirror images are other
classes (metrix.training.flip_check), measured with the real pretrained backbone on drawn glyphs
and on the real sets in ../shared, and --flip / --no-flip reaching the transform and the cache."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy.stats import binomtest

from metrix.backbones import create_backbone
from metrix.datasets.base import Sample
from metrix.datasets.folder import load_image_folder
from metrix.model import EmbeddingModel
from metrix.training.flip_check import MIN_EXCESS, check_mirrors, decide, sign_test
from metrix.training.stage_cache import _key
from metrix.transforms import train_transform

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.parametrize("worse, better", [(0, 0), (5, 0), (10, 10), (30, 12), (3, 40), (61, 39)])
def test_sign_test_is_scipys_one_sided_binomial_test(worse, better):
    expected = binomtest(worse, worse + better, 0.5, alternative="greater").pvalue if worse + better else 1.0
    assert sign_test(worse, better) == pytest.approx(expected, rel=1e-9)


def _outcomes(n, image_wrong, worse, better):
    """Boolean outcomes of n images: `image_wrong` of them wrong, then `worse` more mirrors wrong
    among the right ones and `better` mirrors right among the wrong ones."""
    image = torch.zeros(n, dtype=torch.bool)
    image[:image_wrong] = True
    mirror = image.clone()
    mirror[:better] = False
    mirror[image_wrong : image_wrong + worse] = True
    return image, mirror


def test_flips_go_off_only_for_a_large_excess_beyond_chance():
    off = decide(*_outcomes(400, 100, worse=60, better=10), classes=40)
    assert (off.flip, off.worse, off.better) == (False, 60, 10)
    assert off.excess == pytest.approx(50 / 400)
    balanced = decide(*_outcomes(400, 100, worse=30, better=30), classes=40)
    assert balanced.flip and balanced.excess == 0
    small = decide(*_outcomes(2000, 500, worse=int(2000 * MIN_EXCESS) // 2 + 40, better=40), classes=40)
    assert small.p_value < 0.01 and small.excess < MIN_EXCESS and small.flip  # significant but small
    few = decide(*_outcomes(40, 10, worse=4, better=0), classes=8)
    assert few.excess >= MIN_EXCESS and few.p_value > 0.01 and few.flip  # large but could be chance


def _glyph(rng) -> np.ndarray:
    return rng.uniform(0.15, 0.85, size=(4, 2))  # a three-stroke polyline in the unit square


def _draw(points: np.ndarray, rng, mirror: bool, size: int = 96) -> Image.Image:
    points = points + rng.normal(0, 0.02, points.shape)
    if mirror:
        points = points * [-1, 1] + [1, 0]
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).line([tuple(p) for p in points * size], fill="black", width=int(rng.integers(6, 9)))
    return image


def _glyph_set(root: Path, mirror_classes: bool, glyphs: int = 12, per_class: int = 8) -> list[Sample]:
    """Classes of drawn glyphs. mirror_classes: glyph g is class 2g and its mirror class 2g + 1
    (b and d); otherwise glyph g is class g in both orientations (a bird facing either way)."""
    rng = np.random.default_rng(0)
    samples = []
    for g in range(glyphs):
        shape = _glyph(rng)
        for i in range(per_class * (2 if mirror_classes else 1)):
            label = 2 * g + (i % 2) if mirror_classes else g
            path = root / f"{label:02d}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _draw(shape, rng, mirror=bool(i % 2)).save(path)
            samples.append(Sample(path, label))
    return samples


@pytest.fixture(scope="module")
def pretrained():
    return EmbeddingModel(create_backbone("efficientnet_lite0", True, 96), 32)


@pytest.mark.slow
def test_mirror_images_that_are_other_classes_turn_flips_off(pretrained, tmp_path):
    check = check_mirrors(pretrained, _glyph_set(tmp_path, mirror_classes=True), torch.device("cpu"))
    assert not check.flip, check.explain()
    assert check.explain().startswith("flips off: mirror images look like other classes")


def test_classes_seen_both_ways_keep_flips_on(pretrained, tmp_path):
    check = check_mirrors(pretrained, _glyph_set(tmp_path, mirror_classes=False), torch.device("cpu"))
    assert check.flip, check.explain()
    assert check.excess < MIN_EXCESS


@pytest.mark.slow
@pytest.mark.parametrize("name, flip", [("omniglot_small", False), ("cub100", True)])
def test_the_check_on_real_sets(pretrained, name, flip):
    """Handwritten characters: a mirrored character is not its class. Birds: a mirrored bird is
    the same species facing the other way. On the classes a run trains on (00-49, the first half)."""
    if not (SHARED / name).is_dir():
        pytest.skip(f"{SHARED / name} is not here")
    data = load_image_folder(SHARED / name)
    check = check_mirrors(pretrained, list(data.train.samples) + list(data.val.samples), torch.device("cpu"))
    assert check.flip == flip, check.explain()


def _gradient() -> Image.Image:
    """Dark on the left, light on the right: any crop keeps that order unless it is mirrored."""
    row = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.tile(row, (64, 1))).convert("RGB")


@pytest.mark.parametrize("flip", [True, False])
def test_train_transform_mirrors_only_with_flip(pretrained, flip):
    transform = train_transform(pretrained.preprocessing, flip=flip)
    mirrored = 0
    for seed in range(40):
        torch.manual_seed(seed)
        image = transform(_gradient())
        mirrored += bool(image[0, :, 0].mean() > image[0, :, -1].mean())
    assert (mirrored > 0) == flip


def test_cached_views_are_cached_per_flip_setting(pretrained, tmp_path):
    samples = [Sample(tmp_path / "a.png", 0)]
    _gradient().save(samples[0].path)
    keys = {_key(pretrained.backbone, 3, samples, [1, 2], torch.float16, flip) for flip in (True, False)}
    assert len(keys) == 2
