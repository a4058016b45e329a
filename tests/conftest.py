import os
import shutil
import tempfile

import pytest
import torch

_OWN_CACHE: list[str] = []


def pytest_configure(config):
    # Generated data and cached stage outputs go to a throwaway folder, not the user's cache.
    if "METRIX_CACHE" not in os.environ:
        os.environ["METRIX_CACHE"] = tempfile.mkdtemp(prefix="metrix-test-cache-")
        _OWN_CACHE.append(os.environ["METRIX_CACHE"])


def pytest_unconfigure(config):
    # The suite leaves no trace: its cache goes, and pytest keeps only failed tests' tmp_path folders.
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


def make_labels(layout: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """Class layouts the losses must handle: balanced P x K, random (with singletons),
    all-distinct (no positive pairs) and single-class (no negative pairs)."""
    if layout == "balanced":
        k = 4 if n % 4 == 0 else 2
        return (torch.arange(n) // k)[torch.randperm(n, generator=generator)]
    if layout == "random":
        return torch.randint(0, max(2, n // 3), (n,), generator=generator)
    if layout == "distinct":
        return torch.randperm(n, generator=generator)
    if layout == "single":
        return torch.zeros(n, dtype=torch.long)
    raise ValueError(layout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real run: 2 epochs on 20 synthetic classes at 32 px (both checkpoints kept)."""
    from .training_helpers import metrix_cli, tiny_dataset, write_config

    tmp = tmp_path_factory.mktemp("tiny-run")
    data = tiny_dataset(tmp / "data")
    out = tmp / "run"
    metrix_cli(
        "train", "--data", data, "--config", write_config(tmp / "config.json", epochs=2), "--out", out, "--no-progress"
    )
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    """The tiny run exported to ONNX as a user exports it: its best checkpoint (chosen on the
    validation classes), model.onnx in that checkpoint's folder."""
    from .training_helpers import metrix_cli

    metrix_cli("export", tiny_run)
    return tiny_run / "checkpoints" / (tiny_run / "best").read_text() / "model.onnx"


@pytest.fixture
def other_model(tiny_run, tiny_model, tmp_path):
    """The tiny run's other checkpoint, exported: a model with other weights."""
    from .training_helpers import metrix_cli

    other = next(c for c in (tiny_run / "checkpoints").iterdir() if c.name != tiny_model.parent.name)
    metrix_cli("export", tiny_run, "--checkpoint", other.name, "--output", tmp_path / "other.onnx")
    return tmp_path / "other.onnx"


@pytest.fixture(scope="session")
def floor_model(tmp_path_factory):
    """The pretrained EfficientNet-Lite0 (offline weights), untrained for retrieval, at 160 px: 5 x 5
    cells of real features."""
    from metrix.export.onnx_export import export_backbone

    path = tmp_path_factory.mktemp("floor") / "lite0-160.onnx"
    _, parity = export_backbone("efficientnet_lite0", path, image_size=160)
    assert {p.output for p in parity} == {"embeddings", "cells"} and all(p.ok for p in parity)
    return path
