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


def test_fp16_weights_without_fc_fit_one_call_and_load_like_the_fp32_ones(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    pth = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), pth)
    half = tmp_path / "gpu_weights" / "resnet50-fp16.pt"
    gpu_paper.half_weights(pth, half)
    assert 40 * 2**20 < half.stat().st_size < 48 * 2**20  # fc gone, every float halved
    assert not any(key.startswith("fc.") for key in torch.load(half, weights_only=True))

    config = gpu_paper.run_config("contrastive", "none", 0, "paper", "resnet50", {"pretrained": False})
    models = [gpu_paper.build_model(config, path, torch.device("cpu")).eval() for path in (pth, half)]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full, halved = (m.backbone(images) for m in models)
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(images)  # feature maps
    assert full.shape == expected.shape and torch.allclose(full, expected, atol=1e-4)  # the renaming maps every tensor
    cosine = torch.nn.functional.cosine_similarity(full.flatten(1), halved.flatten(1))
    assert cosine.min() > 0.999


def test_the_plan_checks_each_calls_carry_against_the_limit(tmp_path, capsys):
    root = tmp_path / "checkout"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("gpu_weights/\ngpu_data/\n")
    (root / "code.py").write_bytes(b"x" * 3 * 2**20)
    assert gpu_paper.plan(Path("gpu_weights"), Path("gpu_data"), root) == 1
    assert "call 1: gpu_weights is missing" in capsys.readouterr().out
    (root / "gpu_weights").mkdir()
    (root / "gpu_weights" / "w.pt").write_bytes(b"w" * 45 * 2**20)
    (root / "gpu_data").mkdir()
    with open(root / "gpu_data" / "cub100.pt", "wb") as pack:
        pack.truncate(62 * 2**20)  # 62 + 3 MiB of tree: one MiB too many
    assert gpu_paper.plan(Path("gpu_weights"), Path("gpu_data"), root) == 1
    out = capsys.readouterr().out
    assert "call 1: carry gpu_weights: 45.0 MiB + tree 3.0 MiB = 48.0 of 64 MiB: fits" in out
    assert "= 65.0 of 64 MiB: TOO BIG" in out
    with open(root / "gpu_data" / "cub100.pt", "wb") as pack:
        pack.truncate(57 * 2**20)
    assert gpu_paper.plan(Path("gpu_weights"), Path("gpu_data"), root) == 0
    assert "--copy-to $OUT --set epochs=20" in capsys.readouterr().out
