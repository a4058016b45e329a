"""Galleries without labels: search with the untrained backbone, and training on images alone
(each image its own class, or k-means pseudo-labels), validated by view agreement."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metrix.datasets import DataError, load_unlabelled
from metrix.export.runtime import load_embedder
from metrix.training.config import UNLABELLED_DEFAULT, ConfigError, resolve_config
from metrix.training.image_dataset import ImageDataset
from metrix.training.pseudo_labels import cluster_labels
from metrix.training.sampler import DistinctRepeats, PKSampler
from metrix.training.stage_cache import FeatureCache
from metrix.training.view_agreement import view_agreement
from metrix.transforms import train_transform

from .pictures import blocks
from .training_helpers import metrix_cli, tiny_dataset


def agreement_oracle(embeddings: np.ndarray) -> float:
    """Per view, a plain loop: is the sibling strictly closer than every other view?"""
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    agreed = 0
    for i in range(len(flat)):
        sibling = i ^ 1
        others = [float(flat[i] @ flat[j]) for j in range(len(flat)) if j not in (i, sibling)]
        agreed += float(flat[i] @ flat[sibling]) > max(others)
    return 100 * agreed / len(flat)


def test_view_agreement_against_a_loop():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    for noise in (0.3, 1.0, 3.0):  # from mostly agreeing to mostly not
        views = centres[:, None] + noise * rng.normal(size=(40, 2, 16))
        expected = agreement_oracle(views)
        assert view_agreement(torch.tensor(views), chunk=7) == pytest.approx(expected)
    assert (
        view_agreement(torch.tensor(np.repeat(centres[:, None], 2, axis=1) + 1e-3 * rng.normal(size=(40, 2, 16))))
        == 100
    )
    with pytest.raises(ValueError, match="two views"):
        view_agreement(torch.zeros(1, 2, 4))


def test_clusters_recover_separated_groups():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 32)) * 10
    truth = np.repeat(np.arange(6), 25)
    rng.shuffle(truth)
    labels = cluster_labels(centres[truth] + rng.normal(size=(150, 32)), k=6, seed=0)
    assert labels[0] == 0 and sorted(set(labels.tolist())) == list(range(6))
    # the same partition: every true group is one cluster and no two groups share one
    pairs = {(int(t), int(c)) for t, c in zip(truth, labels)}
    assert len(pairs) == 6 and len({c for _, c in pairs}) == 6


def test_repeats_of_an_image_are_distinct_views(tmp_path):
    sampler = DistinctRepeats(PKSampler(list(range(12)), batch_size=8, samples_per_class=2, seed=3), num_samples=12)
    batches = list(sampler)
    assert len(batches) == 3 and all(len(b) == 8 for b in batches)
    for batch in batches:
        real = [i % 12 for i in batch]
        assert sorted(i // 12 for i in batch) == [0] * 4 + [1] * 4  # each image once and once repeated
        assert all(real.count(r) == 2 for r in real)
    # the cache serves the repeat as another view, the dataset as another crop
    features = torch.arange(12 * 3, dtype=torch.float16).reshape(12, 3, 1, 1, 1)
    cache = FeatureCache(features, torch.arange(12))
    x, y = cache.batch([5, 5 + 12, 5 + 24], epoch_seed=0)
    assert y.tolist() == [5, 5, 5] and len(set(x.flatten().tolist())) == 3
    path = tmp_path / "a.png"
    blocks(0, (80, 80)).save(path)
    from metrix.backbones import create_backbone
    from metrix.datasets import Sample

    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocessing.with_size(32)
    dataset = ImageDataset([Sample(path, 0), Sample(path, 1)], train_transform(pre), seed=4)
    first, again, repeat = dataset[0], dataset[0], dataset[2]
    assert torch.equal(first[0], again[0]) and repeat[1] == 0 and not torch.equal(first[0], repeat[0])


def test_an_unreadable_image_that_is_its_own_class_is_replaced(tmp_path):
    from metrix.backbones import create_backbone
    from metrix.datasets import Sample

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    blocks(1).save(good)
    bad.write_bytes(b"not an image")
    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocessing.with_size(32)
    dataset = ImageDataset([Sample(bad, 0), Sample(good, 1)], train_transform(pre), seed=0)
    with pytest.warns(UserWarning, match="bad.png"):
        image, label = dataset[0]
    assert label == 0 and image.shape == (3, 32, 32)


def flat_folder(root, count=24):
    root.mkdir(parents=True)
    for i in range(count):
        blocks(100 + i, (48, 40)).save(root / f"{i:03d}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_unlabelled_data(tmp_path):
    flat = flat_folder(tmp_path / "flat")
    data = load_unlabelled(flat, val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test), data.labelled) == (18, 6, 0, False)
    assert data.train.labels == list(range(18)) and data.val.labels == list(range(6))
    assert not {s.path for s in data.train.samples} & {s.path for s in data.val.samples}
    assert load_unlabelled(flat, val_fraction=0.25).val.samples == data.val.samples  # fixed, not seeded
    assert "18 unlabelled train images, 6 held out for view agreement" in data.describe()
    classes = tiny_dataset(tmp_path / "classes")
    labelled = load_unlabelled(classes, train_classes="10", val_fraction=0.2)
    assert len(labelled.train) + len(labelled.val) == 120 and len(labelled.test.classes) == 10
    assert len(load_unlabelled(classes).train) + len(load_unlabelled(classes).val) == 240  # no split: every image
    with pytest.raises(DataError, match="needs at least 4"):
        load_unlabelled(flat_folder(tmp_path / "few", count=3))
    with pytest.raises(DataError, match="does not exist"):
        load_unlabelled(tmp_path / "missing")


def test_config_without_labels():
    chosen = resolve_config(recipe="cpu", labels="none")
    assert chosen.labels == UNLABELLED_DEFAULT
    instances = resolve_config(recipe="cpu", labels="instances")
    assert instances.samples_per_class == 2  # two views per image unless told
    assert resolve_config(recipe="cpu", labels="instances", samples_per_class=4).samples_per_class == 4
    assert resolve_config(recipe="cpu", labels="clusters").samples_per_class == 5
    for flags, message in (
        (dict(loss="pa"), "needs classes"),
        (dict(sampler="random"), "balanced"),
        (dict(labels="clusters", clusters=1), "at least 2"),
        (dict(labels="nope"), "unknown labels"),
    ):
        with pytest.raises(ConfigError, match=message):
            resolve_config(recipe="cpu", **{"labels": "instances", **flags})


TRAIN = (
    "--recipe",
    "cpu",
    "--image-size",
    32,
    "--batch-size",
    8,
    "--embedding-size",
    16,
    "--lr",
    1e-3,
    "--no-progress",
    "--num-workers",
    0,
    "--mixup",
    "feature",
)


@pytest.mark.slow
def test_instances_train_export_index_and_search_a_flat_folder(tmp_path):
    photos = flat_folder(tmp_path / "photos")
    run = tmp_path / "run"
    result = metrix_cli("train", "--data", photos, "--labels", "instances", "--epochs", 2, "--out", run, *TRAIN)
    assert "no labels: each image its own class, 2 augmented views of it per batch" in result.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 <= r["val_view_agreement"] <= 100 for r in records)
    assert all(np.isfinite(r["mixed"]) and r["mixed"] > 0 for r in records)  # Metrix mixed instances
    config = json.loads(next((run / "checkpoints").glob("epoch-*/config.json")).read_text())
    assert config["labels"] == "instances" and config["data"]["train_classes"] == []
    failed = metrix_cli("evaluate", run, check=False)
    assert failed.returncode == 2 and "no test classes" in failed.stderr and failed.stderr.count("\n") == 1
    metrix_cli("export", run, "-o", tmp_path / "model.onnx")
    assert (
        "trained without labels (each image its own class)"
        in load_embedder(tmp_path / "model.onnx").metadata.provenance
    )
    metrix_cli("build-index", photos, "--model", tmp_path / "model.onnx", "--out", tmp_path / "idx", "--no-progress")
    hits = json.loads(metrix_cli("search", photos / "007.png", "--index", tmp_path / "idx", "-k", 3, "--json").stdout)
    assert hits["results"][0]["path"] == "007.png" and hits["results"][0]["label"] == ""


@pytest.mark.slow
def test_clusters_train_and_resume_exactly(tmp_path):
    """Resumed after epoch 1 of 2, with clusters drawn before epoch 1 only: epoch 2 trains on the
    clusters kept in the checkpoint, and ends with the uninterrupted run's weights."""
    classes = tiny_dataset(tmp_path / "classes")
    whole = tmp_path / "whole"
    result = metrix_cli(
        "train",
        "--data",
        classes,
        "--train-classes",
        "10",
        "--labels",
        "clusters",
        "--clusters",
        12,
        "--samples-per-class",
        2,
        "--epochs",
        2,
        "--out",
        whole,
        *TRAIN,
    )
    assert result.stdout.count("clusters of the current embeddings") == 1
    part = tmp_path / "part"
    shutil.copytree(whole, part)
    shutil.rmtree(part / "checkpoints" / "epoch-0002")
    (part / "latest").write_text("epoch-0001")
    (part / "best").write_text("epoch-0001")
    resumed = metrix_cli("train", "--resume", part, "--no-progress")
    assert "clusters of the current embeddings" not in resumed.stdout
    final = [load_file(r / "checkpoints" / "epoch-0002" / "model.safetensors") for r in (whole, part)]
    assert final[0].keys() == final[1].keys()
    assert not [k for k in final[0] if not torch.equal(final[0][k], final[1][k])]
    report = json.loads(metrix_cli("evaluate", whole, "--json").stdout)  # on the labelled test classes
    assert report["num_classes"] == 10


@pytest.mark.slow
def test_build_index_with_no_model_uses_the_untrained_backbone(tmp_path):
    photos = flat_folder(tmp_path / "photos", count=6)
    result = metrix_cli("build-index", photos, "--no-progress", cwd=tmp_path)
    assert (
        f"no exported run under runs/ trained on {photos} or a folder holding it: using the untrained pretrained "
        "efficientnet_lite0" in result.stdout
    )
    model = tmp_path / "models" / "efficientnet_lite0-floor.onnx"
    meta = load_embedder(model).metadata
    assert meta.loss == "none" and meta.provenance == "the pretrained efficientnet_lite0 with no training (the floor)"
    manifest_dir = tmp_path / "indexes" / "photos"
    generation = (manifest_dir / "CURRENT").read_text().strip()
    manifest = json.loads((manifest_dir / generation / "manifest.json").read_text())
    assert manifest["model"]["provenance"] == meta.provenance and manifest["count"] == 6
    from metrix.app.page import PATH_EFFECTS, header
    from metrix.index.store import open_index

    index = open_index(manifest_dir)
    shown = header(index)
    index.close()
    assert f"Model: {meta.provenance}. {PATH_EFFECTS['floor']}" in shown
    other_run = tmp_path / "runs" / "demo" / "checkpoints" / "epoch-0001"  # trained on other data (issue 28)
    other_run.mkdir(parents=True)
    (other_run / "model.onnx").write_bytes(b"a model of the demo shapes")
    (other_run.parents[1] / "config.json").write_text(json.dumps({"data": str(tmp_path / "shapes")}))
    again = metrix_cli("build-index", photos, "--no-progress", cwd=tmp_path)
    assert "exported now" not in again.stdout and "exported now" in result.stdout
    assert "shapes are used only with --model: using the untrained pretrained" in again.stdout


@pytest.mark.slow
def test_export_backbone(tmp_path):
    result = metrix_cli(
        "export",
        "--backbone",
        "timm:convnext_atto.d2_in1k",
        "--no-pretrained",
        "--image-size",
        64,
        "-o",
        tmp_path / "floor.onnx",
    )
    assert "random-weight timm:convnext_atto.d2_in1k with no training" in result.stdout
    assert result.stdout.count("parity  onnxruntime vs PyTorch") == 4  # embeddings and cells, batch 1 and 7
    assert "parity  onnxruntime vs PyTorch, cells at batch 7" in result.stdout
    meta = load_embedder(tmp_path / "floor.onnx").metadata
    assert (meta.image_size, meta.embedding_size, meta.train_classes) == (64, 320, 0)
    for args, message in (
        ((tmp_path, "--backbone", "efficientnet_lite0"), "exactly one"),
        ((), "exactly one"),
        ((tmp_path, "--image-size", 64), "go with --backbone"),
    ):
        failed = metrix_cli("export", *args, check=False)
        assert failed.returncode == 2 and message in failed.stderr
