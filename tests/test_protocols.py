"""Both epoch-selection protocols from one real run: the test classes recorded every epoch equal
what `metrix evaluate` measures on that epoch's checkpoint, and they never choose the best one.
The run uses the metrix-code recipe, so it also shows that recipe's optimiser reaching the
checkpoint."""

import json
import sys
from pathlib import Path

import pytest
import torch

from metrix.evaluation.run import evaluate_run
from metrix.training.checkpoint import load_checkpoint

from .training_helpers import metrix_cli, tiny_dataset, write_config

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from recipe_grid import chosen_epochs  # noqa: E402


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocols")
    data = tiny_dataset(tmp / "data")
    config = write_config(tmp / "config.json", recipe="metrix-code", epochs=2, record_test=True, loss="contrastive")
    metrix_cli("train", "--data", data, "--config", config, "--out", tmp / "run", "--no-progress")
    return tmp / "run"


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_recorded_test_metrics_equal_metrix_evaluate_at_each_epoch(recorded_run):
    records = _records(recorded_run)
    assert len(records) == 2
    for record in records:
        evaluated = evaluate_run(recorded_run, f"epoch-{record['epoch']:04d}", log=lambda *a: None)
        for key in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r", "r_precision"):
            assert record[f"test_{key}"] == pytest.approx(evaluated[key], abs=1e-6), (record["epoch"], key)


@pytest.mark.slow
def test_the_best_checkpoint_follows_validation_and_the_grid_reports_both(recorded_run):
    records = _records(recorded_run)
    by_val = max(records, key=lambda r: r["val_map_at_r"])
    assert (recorded_run / "best").read_text() == f"epoch-{by_val['epoch']:04d}"
    chosen = chosen_epochs(recorded_run)
    by_test = max(records, key=lambda r: (r["test_recall_at_1"], -r["epoch"]))
    assert chosen["best_epoch"] == by_val["epoch"] and chosen["best_test_epoch"] == by_test["epoch"]
    assert chosen["best_test_recall_at_1"] == max(r["test_recall_at_1"] for r in records)
    assert chosen["best_test_map_at_r"] == by_test["test_map_at_r"]


@pytest.mark.slow
def test_metrix_code_runs_adam_with_l2_decay_on_random_batches(recorded_run):
    checkpoint = load_checkpoint(recorded_run, "latest")
    config = checkpoint.config["train_config"]
    assert (config["optimizer"], config["sampler"], config["mixed_reduction"]) == ("adam", "random", "nonzero")
    groups = checkpoint.trainer_state()["optimizer"]["param_groups"]
    assert all(g["weight_decay"] == 1e-4 and not g.get("decoupled_weight_decay", False) for g in groups)
    assert torch.isfinite(torch.tensor([r["loss"] for r in _records(recorded_run)])).all()


def test_the_pooled_summary_pairs_runs_by_seed_and_matches_scipy(tmp_path):
    from protocols_summary import comparisons, pooled_rows
    from scipy import stats

    rng = torch.Generator().manual_seed(0)
    rows = {}
    for seed in (2, 0, 1):  # stored out of seed order: pairing must follow the seed, not the order
        for mixup in ("feature", "none"):
            r1, best = (60 + 10 * torch.rand(2, generator=rng)).tolist()
            rows[f"ms-{mixup}-s{seed}"] = {
                "recipe": "full-cpu",
                "loss": "ms",
                "mixup": mixup,
                "seed": seed,
                "recall_at_1": r1,
                "best_test_recall_at_1": max(r1, best),
                "map_at_r": r1 / 2,
                "best_test_map_at_r": best / 2,
            }
    folder = tmp_path / "protocols-full-cpu-cub100"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(rows))
    [found] = comparisons(folder)
    assert (found.regime, found.data, found.mixup) == ("full-cpu", "cub100", "feature")
    diffs = [rows[f"ms-feature-s{s}"]["recall_at_1"] - rows[f"ms-none-s{s}"]["recall_at_1"] for s in (0, 1, 2)]
    assert found.paired("recall_at_1") == pytest.approx(diffs)
    line = next(row for row in pooled_rows([found]) if "(ours): R@1" in row and row.startswith("| all"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    low, high = stats.ttest_1samp(diffs, 0).confidence_interval(0.95)
    assert cells[2] == "3" and float(cells[3]) == pytest.approx(sum(diffs) / 3, abs=0.005)
    assert cells[4] == f"[{low:+.2f}, {high:+.2f}]"
    assert cells[5] == f"{sum(d > 0 for d in diffs)} of 3"
