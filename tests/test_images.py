"""Decoding real files of every awkward kind, and training data that survives a bad file."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from metrix.datasets import Sample
from metrix.images import ImageDecodeError, open_rgb
from metrix.training.image_dataset import ImageDataset


def _jpeg(path, size=(16, 8), color=(200, 30, 30), **kwargs):
    Image.new("RGB", size, color).save(path, "JPEG", **kwargs)
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not an image at all"), "not an image"),
        (lambda p: p.write_bytes(_jpeg(p).read_bytes()[:200]), "cannot decode"),
    ],
    ids=["zero-bytes", "text", "truncated"],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad photo.jpg"
    make(path)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        open_rgb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_pixel_guard(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", size=(100, 100))
    with pytest.raises(ImageDecodeError, match="exceeds the 5,000-pixel limit"):
        open_rgb(path, max_pixels=5000)


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    if mode == "I;16":  # a 16-bit grey PNG
        image = Image.fromarray(np.full((10, 12), 40000, np.uint16))
    else:
        image = Image.new("RGB", (12, 10), (250, 120, 10)).convert(mode)
    path = tmp_path / f"x.{'jpg' if mode in ('CMYK', 'L') else 'png'}"
    image.save(path)
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (12, 10)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_transparent_pixels_are_composited_on_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.save(tmp_path / "t.png")
    assert open_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_a_bad_training_image_is_replaced_by_its_class_and_named(tmp_path):
    good = [_jpeg(tmp_path / f"{i}.jpg", color=(i * 40, 0, 0)) for i in range(3)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    samples = [Sample(good[0], 0), Sample(bad, 0), Sample(good[1], 0), Sample(good[2], 1)]
    dataset = ImageDataset(samples, lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, label = dataset[1]
        dataset[1]
    assert label == 0 and torch.equal(image, dataset[2][0])  # the next image of class 0
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "broken.jpg" in messages[0]  # named once, not every epoch
