"""bench/gpu_paper.py, the GPU run of the paper's protocol, smoke-tested on the CPU at a tiny size:
its torch retrieval metrics against metrix.evaluation.metrics (faiss), its crops, and a grid that stops at
its time limit and resumes to exactly what an uninterrupted run gives."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metrix.evaluation.metrics import evaluate_retrieval

from .training_helpers import tiny_dataset

BENCH = Path(__file__).parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_paper  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_retrieval_metrics_equal_metrix_evaluation(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 12, 200)
    centres = rng.normal(size=(12, 16))
    embeddings = (centres[labels] + 1.2 * rng.normal(size=(200, 16))).astype(np.float32)
    ours = gpu_paper.retrieval_metrics(torch.from_numpy(embeddings), torch.from_numpy(labels))
    oracle = evaluate_retrieval(embeddings, labels, ks=(1, 2, 4, 8), nmi=False)
    for k in (1, 2, 4, 8):
        assert ours[f"recall_at_{k}"] == pytest.approx(oracle.recall_at[k], abs=1e-9)
    assert ours["map_at_r"] == pytest.approx(oracle.map_at_r, abs=1e-4)
    assert 0 < ours["map_at_r"] < 100


def test_random_resized_crops_lie_inside_the_image_and_follow_the_generator():
    for shape in ((227, 300), (40, 30), (16, 200)):
        first = [gpu_paper.random_resized_crop(shape, torch.Generator().manual_seed(s)) for s in range(50)]
        again = [gpu_paper.random_resized_crop(shape, torch.Generator().manual_seed(s)) for s in range(50)]
        assert first == again
        for top, left, h, w in first:
            assert 0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= shape[0] and left + w <= shape[1]
        if shape == (227, 300):  # a thin strip mostly falls back to the centre crop
            assert len(set(first)) > 40


def _grid(pack, out, minutes):
    return subprocess.run(
        [
            sys.executable,
            str(BENCH / "gpu_paper.py"),
            "run",
            "--pack",
            pack,
            "--out",
            out,
            "--backbone",
            "efficientnet_lite0",
            "--runs",
            "contrastive:none",
            "contrastive:feature",
            "--seeds",
            "0",
            "--minutes",
            str(minutes),
            "--set",
            "image_size=32",
            "embedding_size=16",
            "batch_size=16",
            "epochs=2",
            "warmup_epochs=1",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.slow
def test_a_tiny_grid_stops_at_its_limit_and_resumes_exactly(tmp_path):
    pack = tmp_path / "tiny.pt"
    subprocess.run(
        [sys.executable, str(BENCH / "gpu_paper.py"), "pack", "--data", tiny_dataset(tmp_path / "data"), "--out", pack],
        check=True,
        capture_output=True,
    )
    straight = tmp_path / "straight"
    assert "all runs done" in _grid(pack, straight, minutes=10)
    interrupted = tmp_path / "interrupted"
    first = _grid(pack, interrupted, minutes=1e-6)  # one epoch, then the limit
    assert "stopping after epoch 1" in first and not (interrupted / "results.json").exists()
    calls = 1
    while "all runs done" not in _grid(pack, interrupted, minutes=1e-6):
        calls += 1
        assert calls < 10
    expected = json.loads((straight / "results.json").read_text())
    resumed = json.loads((interrupted / "results.json").read_text())
    assert set(expected) == set(resumed) == {"contrastive-none-s0", "contrastive-feature-s0"}
    for name, row in expected.items():
        assert row["best_test_epoch"] >= 1 and row["best_test_recall_at_1"] >= row["recall_at_1"]
        for key in ("loss", "val_map_at_r", "test_recall_at_1", "test_map_at_r"):
            assert [c[key] for c in resumed[name]["curve"]] == pytest.approx(
                [c[key] for c in row["curve"]], rel=1e-5
            ), (name, key)
    assert resumed["contrastive-feature-s0"]["curve"][-1]["mixed"] > 0
