"""The pieces of the full CPU recipe: training images decoded once, bfloat16 autocast of the
backbone, retrieval measured on training classes, the line that says which recipe runs and why,
and one real run with all of them and the paper's random batches."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from metrix.datasets import load_image_folder
from metrix.datasets.base import Sample
from metrix.images import ImageDecodeError
from metrix.model import BFloat16Features, EmbeddingModel
from metrix.training.config import explain_choices, resolve_config
from metrix.training.decoded_images import DecodedImages
from metrix.training.image_dataset import ImageDataset
from metrix.training.setup import train_eval_indices
from metrix.transforms import eval_transform

from .training_helpers import metrix_cli, tiny_dataset, write_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Samples of two classes of non-square pictures (PNG and JPEG), the last one a file that is
    not an image."""
    root = tmp_path_factory.mktemp("decoded")
    rng = np.random.default_rng(0)
    samples = []
    for label, size in enumerate(((70, 45), (41, 90))):
        for i in range(3):
            path = root / f"{label}-{i}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
            samples.append(Sample(path, label))
    (root / "9.jpg").write_bytes(b"not a jpeg")
    return samples + [Sample(root / "9.jpg", 1)]


def test_decoded_pixels_give_exactly_what_decoding_the_files_gives(folder):
    """Decoded once at the evaluation resize, an image then crops to the same tensor as when it is
    decoded from its file every time (the oracle: the file path)."""
    samples = folder[:-1]
    pre = EmbeddingModel.create("efficientnet_lite0", 8, pretrained=False).preprocessing.with_size(32)
    decoded = DecodedImages.decode(samples, pre.resize_size, pre.interpolation, threads=2)
    assert all(min(p.shape[:2]) == pre.resize_size for p in decoded.pixels)
    assert decoded.nbytes == sum(p.size for p in decoded.pixels)
    from_files = ImageDataset(samples, eval_transform(pre))
    from_memory = ImageDataset(samples, eval_transform(pre), images=decoded)
    for i in range(len(samples)):
        assert torch.equal(from_files[i][0], from_memory[i][0]), samples[i].path


def test_a_bad_image_is_remembered_by_name_and_replaced_by_its_class(folder):
    samples, bad = folder, len(folder) - 1
    decoded = DecodedImages.decode(samples, 20)
    assert list(decoded.failures) == [bad]
    with pytest.raises(ImageDecodeError, match=r"9\.jpg: "):
        decoded.open(bad)
    dataset = ImageDataset(
        samples,
        eval_transform(EmbeddingModel.create("efficientnet_lite0", 8, pretrained=False).preprocessing.with_size(16)),
        images=decoded,
    )
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*9\.jpg"):
        image, label = dataset[bad]
    assert label == samples[bad].label and image.shape == (3, 16, 16)
    assert decoded.subset([bad, 0]).failures == {0: decoded.failures[bad]}


def test_bfloat16_backbone_keeps_the_head_and_loss_in_float32():
    torch.manual_seed(0)
    model = EmbeddingModel.create("efficientnet_lite0", 16, pretrained=False).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        exact, half = model.features(images), BFloat16Features(model).features(images)
    assert half.dtype == torch.float32
    assert not torch.equal(half, exact)  # it really ran in bfloat16
    torch.testing.assert_close(half, exact, rtol=0.1, atol=0.1 * exact.abs().max().item())


def test_training_retrieval_uses_as_many_whole_training_classes_as_validation(tmp_path):
    data = load_image_folder(tiny_dataset(tmp_path / "d"))

    def _train_eval_samples(samples, num_classes, seed):
        return [samples[i] for i in train_eval_indices(samples, num_classes, seed)]

    chosen = _train_eval_samples(data.train.samples, len(data.val.classes), seed=0)
    classes = {s.label for s in chosen}
    assert len(classes) == len(data.val.classes) and classes <= set(data.train.classes)
    assert len(chosen) == sum(s.label in classes for s in data.train.samples)
    assert _train_eval_samples(data.train.samples, 2, seed=0) == chosen
    assert {s.label for s in _train_eval_samples(data.train.samples, 2, seed=5)} != classes or len(
        data.train.classes
    ) < 4


def test_the_first_line_says_which_recipe_and_mixing_and_why():
    config = resolve_config(recipe="full-cpu")
    assert explain_choices(config, given={"recipe"}).startswith("recipe full-cpu (asked for: the whole network trains")
    line = explain_choices(config, given={"recipe"})
    assert "mixing none (the recipe's default: no mixing measured best on the validation classes)" in line
    assert "mixing feature (the recipe's default: the paper's claim, untested by this project" in explain_choices(
        resolve_config(recipe="full"), given={"recipe"}
    )
    assert "mixing embed (asked for)" in explain_choices(
        resolve_config(recipe="full-cpu", mixup="embed"), given={"recipe", "mixup"}
    )
    where = "with" if torch.cuda.is_available() else "without"
    assert f"(the default {where} a GPU" in explain_choices(resolve_config(), given=set())


@pytest.mark.slow
def test_a_full_cpu_run_with_random_batches_coin_pairs_and_bfloat16(tmp_path):
    root = tiny_dataset(tmp_path / "d")
    config = write_config(
        tmp_path / "c.json",
        recipe="full-cpu",
        epochs=2,
        sampler="random",
        pair_choice="coin",
        precision="bf16",
        mixup="feature",
    )
    run = tmp_path / "run"
    out = metrix_cli("train", "--data", root, "--config", config, "--out", run, "--no-progress").stdout
    lines = out.splitlines()
    assert lines[0].startswith("recipe full-cpu (asked for") and "mixing feature (asked for)" in lines[0], out
    assert "random batches of 8" in out and "(coin pairs)" in out and "bf16" in out
    assert "decoded 120 images once" in out and "estimated" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert 0 <= record["train_map_at_r"] <= 100 and 0 <= record["val_map_at_r"] <= 100
    assert json.loads((run / "config.json").read_text())["decode_once"] is True
