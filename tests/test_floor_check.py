"""Trust the model that serves (issue 40): every run is compared with no training on its validation
classes, with a paired bootstrap interval; the model card carries the comparison into the exported
model, and build-index's default is the best measured model, never one measured worse than the
untrained backbone."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from metrix.cli.models import choose_model
from metrix.evaluation.bootstrap import paired_difference
from metrix.evaluation.card import CARD_FILE, describe, read_card
from metrix.export.runtime import load_embedder

from .training_helpers import metrix_cli, tiny_dataset, write_config

CUB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cub100"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_paired_bootstrap_interval_matches_scipys(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(300) < 0.8  # hits at rank 1 of one model
    b = rng.random(300) < 0.7
    ours = paired_difference(100 * a, 100 * b, resamples=4000, seed=seed)
    oracle = scipy.stats.bootstrap(
        (100.0 * a - 100.0 * b,), np.mean, n_resamples=4000, method="percentile", random_state=seed
    ).confidence_interval
    assert ours.mean == pytest.approx(100 * (a.mean() - b.mean()))
    assert ours.low == pytest.approx(oracle.low, abs=0.6) and ours.high == pytest.approx(oracle.high, abs=0.6)
    width = ours.high - ours.low
    assert width == pytest.approx(2 * 1.96 * np.std(100.0 * a - 100.0 * b) / np.sqrt(300), rel=0.1)


def test_the_verdict_follows_the_interval():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    assert paired_difference(base + 0.05, base).verdict == "better"
    assert paired_difference(base - 0.05 + 0.01 * rng.standard_normal(400), base).verdict == "worse"
    few = rng.random(20) < 0.9  # 20 validation images, 2 more hits: cannot tell
    more = few.copy()
    more[np.flatnonzero(~few)[:2]] = True
    assert paired_difference(more, few).verdict == "tied"
    with pytest.raises(ValueError, match="equal-length 1-d"):
        paired_difference([1, 2], [1, 2, 3])


def _run(root: Path, name: str, data: str, stamp: int, card: dict | None, checkpoints=("epoch-0001",)) -> Path:
    run = root / "runs" / name
    for checkpoint in checkpoints:
        folder = run / "checkpoints" / checkpoint
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"x")
        os.utime(folder / "model.onnx", (stamp, stamp))
    (run / "config.json").write_text(json.dumps({"data": data}))
    if card is not None:
        (run / CARD_FILE).write_text(json.dumps({"checkpoint": checkpoints[-1], **card}))
    return run


def _card(gain: float, floor_size: int = 160) -> dict:
    trained, floor = 60 + gain, 60.0
    return {
        "floor_check": {
            "verdict": "better" if gain > 1 else "worse" if gain < -1 else "tied",
            "validation_queries": 120,
            "validation_classes": 4,
            "trained": {"recall_at_1": 90.0, "map_at_r": trained},
            "floor": {
                "backbone": "efficientnet_lite0",
                "image_size": floor_size,
                "recall_at_1": 88.0,
                "map_at_r": floor,
            },
            "difference": {
                "recall_at_1": {"mean": 2.0, "low": -1.0, "high": 5.0, "n": 120},
                "map_at_r": {"mean": gain, "low": gain - 1, "high": gain + 1, "n": 120},
            },
        }
    }


def test_the_default_model_is_the_best_measured_never_one_worse_than_no_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos = str(tmp_path / "photos")
    assert choose_model("photos").model is None
    _run(tmp_path, "worse-newest", photos, 9, _card(-3.0, floor_size=224))
    choice = choose_model("photos")
    assert choice.model is None and (choice.floor_backbone, choice.floor_size) == ("efficientnet_lite0", 224)
    assert "runs/worse-newest measured worse than no training (MAP@R -3.00 [-4.00, -2.00])" in choice.why
    _run(tmp_path, "unmeasured", photos, 8, None)
    _run(tmp_path, "small-gain", photos, 7, _card(0.5))
    _run(tmp_path, "big-gain", "photos", 1, _card(2.5), checkpoints=("epoch-0001", "epoch-0002"))
    _run(tmp_path, "other-data", str(tmp_path / "shapes"), 10, _card(9.0))
    _run(tmp_path, "not-exported", photos, 6, {**_card(5.0), "checkpoint": "epoch-0009"})
    choice = choose_model(tmp_path / "photos" / "birds")
    assert choice.model == Path("runs/big-gain/checkpoints/epoch-0002/model.onnx")  # the carded checkpoint
    assert "of the 2 runs trained on photos that measured better than no training" in choice.why
    assert "MAP@R 62.50 vs 60.00 for the untrained efficientnet_lite0 on 120 validation images" in choice.why
    assert choose_model("shapes").model == Path("runs/other-data/checkpoints/epoch-0001/model.onnx")
    other = choose_model("holiday")
    assert other.model is None and "are used only with --model" in other.why


def test_a_run_without_labels_is_chosen_only_when_no_measured_run_is_better(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    not_measured = {"floor_check": {"verdict": "not measured", "why": "trained without labels: nothing labelled"}}
    _run(tmp_path, "unlabelled", "photos", 5, not_measured)
    _run(tmp_path, "worse", "photos", 6, _card(-2.0))
    choice = choose_model("photos")
    assert choice.model == Path("runs/unlabelled/checkpoints/epoch-0001/model.onnx")
    assert "trained without labels" in choice.why
    _run(tmp_path, "better", "photos", 1, _card(1.0))
    assert choose_model("photos").model == Path("runs/better/checkpoints/epoch-0001/model.onnx")


@pytest.mark.slow
def test_a_run_worse_than_no_training_is_flagged_carried_and_never_served_by_default(tmp_path):
    """A real run that is worse: 32 px, 3 epochs on synthetic shapes, against the untrained
    backbone at its best size on the same validation classes."""
    data = tiny_dataset(tmp_path / "data")
    run = tmp_path / "runs" / "tiny"
    trained = metrix_cli(
        "train",
        "--data",
        data,
        "--config",
        write_config(tmp_path / "c.json"),
        "--out",
        run,
        "--no-progress",
        cwd=tmp_path,
    )
    card = read_card(run)
    check = card["floor_check"]
    assert check["verdict"] == "worse" and check["floor"]["image_size"] > 32
    assert check["validation_queries"] == 24 and check["validation_classes"] == 2
    lines = describe(card)
    assert all(line in trained.stdout for line in lines)
    assert "WORSE THAN NO TRAINING" in trained.stdout and "--image-size" in trained.stdout
    # the card measures what training measured: its MAP@R is the chosen epoch's validation MAP@R
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    chosen = next(r for r in records if r["epoch"] == int(card["checkpoint"].split("-")[1]))
    assert check["trained"]["map_at_r"] == pytest.approx(chosen["val_map_at_r"], abs=1e-6)
    sizes = check["floor"]["map_at_r_by_size"]
    assert check["floor"]["map_at_r"] == max(sizes.values()) and set(sizes) == {"32", "160", "224"}

    metrix_cli("export", run, cwd=tmp_path)
    exported = load_embedder(run / "checkpoints" / card["checkpoint"] / "model.onnx").metadata
    assert exported.floor_check == check
    assert "; WORSE than no training on its validation classes (MAP@R -" in exported.provenance  # page, /api/info
    built = metrix_cli("build-index", data, "--no-progress", cwd=tmp_path)
    size = check["floor"]["image_size"]
    assert f"runs/tiny measured worse than no training (MAP@R {check['difference']['map_at_r']['mean']:+.2f}" in (
        built.stdout
    )
    assert f"using the untrained pretrained efficientnet_lite0 at {size} px" in built.stdout
    floor = load_embedder(tmp_path / "models" / f"efficientnet_lite0-{size}-floor.onnx").metadata
    assert floor.image_size == size and floor.loss == "none"

    again = metrix_cli("evaluate", run, "--against-floor", cwd=tmp_path)
    assert read_card(run)["floor_check"] == check and "WORSE THAN NO TRAINING" in again.stdout


@pytest.mark.slow
@pytest.mark.skipif(not CUB.is_dir(), reason="needs ../shared/datasets/cub100")
def test_the_whole_network_at_96_px_on_photos_is_flagged_worse_than_no_training(tmp_path):
    """The case that motivated the check: full-cpu on photos, whose 96 px input costs more than
    training buys; one epoch on 5 images per class keeps it short."""
    run = tmp_path / "run"
    result = metrix_cli(
        "train", "--data", CUB, "--recipe", "full-cpu", "--epochs", "1", "--train-images-per-class", "5",
        "--out", run, "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    check = read_card(run)["floor_check"]
    assert check["verdict"] == "worse" and check["floor"]["image_size"] >= 160, check
    assert "WORSE THAN NO TRAINING" in result.stdout and "--recipe cpu" in result.stdout
