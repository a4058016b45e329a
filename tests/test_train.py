"""`metrix train` and `metrix evaluate` on real (small) data, and bad input failing fast."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from metrix.cli import app
from metrix.training.config import resolve_config
from metrix.training.setup import fit_batch

from .training_helpers import TINY, metrix_cli, tiny_dataset, write_config

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`metrix train` with no data: the built-in synthetic set (small, via the config file)."""
    tmp = tmp_path_factory.mktemp("run")
    config = write_config(
        tmp / "config.json", epochs=2, synthetic_classes=20, synthetic_images_per_class=12, synthetic_image_size=32
    )
    out = tmp / "run"
    result = metrix_cli(
        "train",
        "--config",
        config,
        "--out",
        out,
        "--no-progress",
        env={**__import__("os").environ, "METRIX_CACHE": str(tmp / "cache")},
    )
    return out, result.stdout


@pytest.mark.slow
def test_train_without_data_uses_synthetic_and_writes_a_run(trained_run):
    run, stdout = trained_run
    assert "built-in synthetic dataset" in stdout
    assert json.loads((run / "config.json").read_text())["synthetic_classes"] == 20
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(
        {"loss", "clean", "mixed", "lr", "images_per_s", "val_recall_at_1", "val_map_at_r"} <= r.keys() for r in records
    )
    with Image.open(run / "curves.png") as plot:
        assert plot.format == "PNG" and plot.width > 300
    latest = run / "checkpoints" / (run / "latest").read_text()
    assert {p.name for p in latest.iterdir()} == {"model.safetensors", "config.json", "trainer_state.pt"}
    described = json.loads((latest / "config.json").read_text())
    assert described["model"]["backbone"] == "efficientnet_lite0"
    assert described["model"]["embedding_size"] == TINY["embedding_size"]
    assert described["model"]["preprocessing"]["image_size"] == 32
    assert (described["loss"], described["mixup"], described["seed"]) == ("ms", "feature", 0)
    assert described["data"]["name"] == "synthetic" and len(described["data"]["train_classes"]) == 8
    assert described["versions"]["torch"] and described["versions"]["metrix"]


def test_train_decides_flips_from_the_data_and_says_why(trained_run):
    run, stdout = trained_run
    check = json.loads((run / "flip_check.json").read_text())
    flip = json.loads((run / "config.json").read_text())["flip"]
    assert flip is check["flip"] and check["images"] > 0 and 0 <= check["p_value"] <= 1
    line = next(line for line in stdout.splitlines() if line.startswith("flips "))
    assert line.startswith(f"flips {'on' if flip else 'off'}: ") and f"{check['mirror_errors']:.1%}" in line
    assert f"flips {'on' if flip else 'off'}," in stdout  # the settings line


@pytest.mark.slow
def test_no_flip_is_kept_without_a_check(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    config = write_config(tmp_path / "config.json", epochs=1, warmup_epochs=0)
    out = tmp_path / "run"
    result = metrix_cli("train", "--data", data, "--config", config, "--no-flip", "--out", out, "--no-progress")
    assert json.loads((out / "config.json").read_text())["flip"] is False
    assert not (out / "flip_check.json").exists() and "flips off," in result.stdout


def test_evaluate_reports_every_metric(trained_run):
    run, _ = trained_run
    result = runner.invoke(app, ["evaluate", str(run), "--json"], env={"METRIX_CACHE": str(run.parent / "cache")})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["data"] == "synthetic" and report["num_classes"] == 10 and report["num_queries"] == 120
    assert report["checkpoint"] == (run / "best").read_text()  # the default: chosen on the validation classes
    for key in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r", "r_precision", "nmi"):
        assert 0 <= report[key] <= 100
    assert report["recall_at_1"] <= report["recall_at_2"] <= report["recall_at_4"] <= report["recall_at_8"]
    assert 0 <= report["utilization"] <= 4


def _fails(args, match, tmp_path):
    out = tmp_path / "should-not-exist"
    result = runner.invoke(app, ["train", *map(str, args), "--out", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error: "), result.output
    assert match in message[0]
    assert not out.exists(), "a failed start must not leave a run directory"


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_one_class_folder(tmp_path):
    _fails(["--data", _folder(tmp_path / "d", {"a": 4})], "class", tmp_path)


def test_class_with_a_single_image(tmp_path):
    _fails(["--data", _folder(tmp_path / "d", {"a": 4, "b": 1, "c": 3, "d": 3})], "single image", tmp_path)


def test_unknown_backbone(tmp_path):
    _fails(["--data", tiny_dataset(tmp_path / "d"), "--backbone", "vgg99"], "unknown backbone 'vgg99'", tmp_path)


def test_benchmark_root_without_its_split_files(tmp_path):
    (tmp_path / "empty").mkdir()
    _fails(["--dataset", "cub", "--data-root", tmp_path / "empty"], "images.txt", tmp_path)


@pytest.mark.slow
def test_a_small_folder_trains_with_the_batch_it_can_fill(tmp_path):
    """A first try is a small folder (issue 28): 4 training classes cannot fill 50 classes of 2, so
    the batch shrinks to every class, says so, and the run trains."""
    out = tmp_path / "run"
    result = metrix_cli(
        "train",
        "--data",
        tiny_dataset(tmp_path / "d"),
        "--config",
        write_config(tmp_path / "c.json", epochs=1),
        "--batch-size",
        "100",
        "--out",
        out,
        "--no-progress",
    )
    assert "batches of 16 (8 classes x 2 images) instead of 100: the training split has 8 classes" in result.stdout
    assert json.loads((out / "config.json").read_text())["batch_size"] == 16 and (out / "latest").is_file()


def test_fit_batch_takes_what_the_split_has_and_nothing_else():
    config = resolve_config(recipe="full", batch_size=100, samples_per_class=5)
    assert fit_batch(config, [0, 0, 1, 1, 2], world_size=1) is not None and config.batch_size == 15
    assert fit_batch(config, list(range(100)), world_size=1) is None and config.batch_size == 15
    config = resolve_config(recipe="full", batch_size=100, sampler="random")
    assert "has 51 images" in fit_batch(config, [0, 1] * 25 + [3], world_size=2) and config.batch_size == 50


def test_batch_not_a_multiple_of_k(tmp_path):
    _fails(
        ["--data", tiny_dataset(tmp_path / "d"), "--batch-size", "9", "--samples-per-class", "2"], "multiple", tmp_path
    )


def test_unknown_loss_and_mixup(tmp_path):
    _fails(["--loss", "triplet"], "unknown loss 'triplet'", tmp_path)
    _fails(["--mixup", "pixels"], "unknown mixup 'pixels'", tmp_path)


def test_resume_with_other_settings_is_refused(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--epochs", "5"])
    assert result.exit_code == 2 and "--resume continues a run with its own settings" in result.output


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_evaluate_a_folder_without_checkpoint(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "no latest checkpoint" in result.output


def test_evaluate_with_the_untrained_floor(trained_run):
    run, _ = trained_run
    result = runner.invoke(
        app, ["evaluate", str(run), "--floor", "--json"], env={"METRIX_CACHE": str(run.parent / "cache")}
    )
    assert result.exit_code == 0, result.output
    both = json.loads(result.output)
    assert both["floor"]["checkpoint"] == "untrained backbone (floor)"
    assert both["floor"]["num_queries"] == both["trained"]["num_queries"] == 120
    assert both["floor"]["map_at_r"] != both["trained"]["map_at_r"]


def test_evaluate_text_names_the_checkpoint_and_titles_whole_columns(trained_run):
    run, _ = trained_run
    result = runner.invoke(app, ["evaluate", str(run), "--floor"], env={"METRIX_CACHE": str(run.parent / "cache")})
    assert result.exit_code == 0, result.output
    best = (run / "best").read_text()
    val_map = json.loads((run / "checkpoints" / best / "config.json").read_text())["metrics"]["val_map_at_r"]
    lines = result.output.splitlines()
    assert f"using checkpoint {best} (best on validation classes, val MAP@R {val_map:.1f})" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith(f"{run} on synthetic")) + 1
    assert lines[header].split() == [best, "untrained", "backbone", "(floor)"]  # whole titles
    table = lines[header + 1 :]
    assert [row.split()[0] for row in table] == [
        "recall_at_1",
        "recall_at_2",
        "recall_at_4",
        "recall_at_8",
        "map_at_r",
        "r_precision",
        "nmi",
        "utilization",
    ]
    assert all(len(row) == len(lines[header]) and len(row.split()) == 3 for row in table)  # aligned under the titles


@pytest.fixture(scope="module")
def run_without_validation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("no-val")
    out = tmp / "run"
    metrix_cli(
        "train",
        "--data",
        tiny_dataset(tmp / "data"),
        "--config",
        write_config(tmp / "config.json", epochs=2, val_fraction=0),
        "--out",
        out,
        "--no-progress",
    )
    return out


@pytest.mark.slow
def test_evaluate_without_a_validation_split_uses_latest_and_says_so(run_without_validation):
    run = run_without_validation
    latest = (run / "latest").read_text()
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"run has no validation split: using latest ({latest})" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith(f"{run} on folder"))
    assert lines[header + 1].split() == [latest]  # the table's one column is the latest checkpoint


def test_train_help_reads_in_labelled_panels_at_100_columns():
    result = metrix_cli("train", "--help", env={**os.environ, "COLUMNS": "100"})
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100 and len(lines) < 100
    for panel in ("Data", "Model", "Loss and Metrix", "Schedule", "Output and settings"):
        assert any(line.startswith(f"╭─ {panel} ─") for line in lines), panel
