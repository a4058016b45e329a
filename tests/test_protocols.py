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


def test_paired_power_matches_published_values():
    """Textbook values for the one-sample (= paired) two-sided t-test at alpha 0.05, effect size
    d = change / sd: G*Power gives n = 34 for d = 0.5 and power 0.8, with actual power 0.8077775;
    R's pwr.t.test gives n = 33.36713 (one-sample, d = 0.5) and n = 14.30276 (paired, d = 0.8)."""
    from protocols_summary import paired_power

    assert paired_power(0.5, 1.0, 34) == pytest.approx(0.8077775, abs=1e-6)
    assert paired_power(0.5, 1.0, 33) < 0.8
    assert paired_power(0.5, 1.0, 33.36713) == pytest.approx(0.8, abs=1e-6)
    assert paired_power(0.8, 1.0, 14.30276) == pytest.approx(0.8, abs=1e-6)
    assert paired_power(-0.5, 2.0, 34) == pytest.approx(paired_power(1.0, 4.0, 34))  # two-sided, scale-free
    from scipy import stats

    lower = stats.nct.cdf(-stats.t.ppf(0.975, 4), 4, 0.3 * 5**0.5)  # the lower tail, directly, where it is finite
    upper = stats.nct.sf(stats.t.ppf(0.975, 4), 4, 0.3 * 5**0.5)
    assert paired_power(0.3, 1.0, 5) == pytest.approx(upper + lower, rel=1e-9)


def test_the_detectable_change_of_two_pairs_is_finite():
    """One degree of freedom: scipy's noncentral t cdf gives nan far in its lower tail."""
    from protocols_summary import detectable_change, paired_power

    change = detectable_change(2.9, 2)
    assert 20 < change < 40 and paired_power(change, 2.9, 2) == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize("pairs, sd", [(3, 0.8), (5, 1.5), (10, 0.4)])
def test_the_detectable_change_is_rejected_four_times_in_five_by_simulation(pairs, sd):
    """The oracle: simulate rows of `pairs` normal paired changes whose true mean is the detectable
    change and run scipy's paired t-test on each; about 80% of them must reject no change."""
    import numpy as np
    from protocols_summary import detectable_change
    from scipy import stats

    change = detectable_change(sd, pairs)
    rows = np.random.default_rng(pairs).normal(change, sd, size=(40_000, pairs))
    rejected = stats.ttest_1samp(rows, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.80, abs=0.01)  # 5 standard errors of the simulation
    half = stats.t.ppf(0.975, pairs - 1) * sd / pairs**0.5
    assert change > half  # more than the interval's half-width: a change only just significant is found half the time


def test_each_row_gets_its_interval_detectable_change_and_verdict(tmp_path):
    from protocols_summary import comparisons, detectable_change, paired_row, statistics_row

    def write(folder, changes):
        rows = {}
        for seed, change in enumerate(changes):
            base = 70.0 + seed
            for mixup, r1 in (("none", base), ("feature", base + change)):
                rows[f"ms-{mixup}-s{seed}"] = {
                    "recipe": "cpu",
                    "loss": "ms",
                    "mixup": mixup,
                    "seed": seed,
                    "recall_at_1": r1,
                    "map_at_r": r1 / 2,
                    "best_test_recall_at_1": r1,
                    "best_test_map_at_r": r1 / 2,
                }
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(rows))
        [found] = comparisons(tmp_path / folder)
        return found

    gain = write("small-folders-cpu-cub100-5", [1.0, 1.2, 0.9, 1.1, 1.0])
    assert gain.data == "cub100-5"
    assert paired_row(gain.paired("recall_at_1")).verdict == "gain"
    loss = write("small-folders-cpu-cub100-10", [-1.0, -1.2, -0.9, -1.1, -1.0])
    assert paired_row(loss.paired("recall_at_1")).verdict == "loss"
    unclear = write("small-folders-cpu-cub100-20", [1.0, -1.0, 0.5, -0.5, 0.2])
    row = paired_row(unclear.paired("recall_at_1"))
    assert row.low < 0 < row.high and row.detectable == pytest.approx(detectable_change(row.sd, 5))
    assert row.verdict == f"no evidence either way, could not detect less than {row.detectable:.2f}"
    cells = [c.strip() for c in statistics_row(unclear).strip("|").split("|")]
    low, high = stats_interval([1.0, -1.0, 0.5, -0.5, 0.2])
    assert cells[:5] == ["cpu", "cub100-20", "ms", "feature", "5"]
    assert cells[6] == f"{0.04:+.2f} [{low:+.2f}, {high:+.2f}]" and cells[9] == row.verdict
    half = paired_row(unclear.paired("map_at_r"))  # MAP@R moves by half as much: half the detectable change
    assert half.detectable == pytest.approx(row.detectable / 2) and cells[12] == f"{half.detectable:.2f}"


def stats_interval(values):
    from scipy import stats

    return stats.ttest_1samp(values, 0).confidence_interval(0.95)


def test_small_folders_overfitting_reads_the_peak_the_fall_and_the_gap(tmp_path):
    from small_folders_summary import overfitting, overfitting_rows

    curve = [
        {"epoch": e, "val_map_at_r": v, "train_map_at_r": t}
        for e, v, t in ((1, 60.0, 62.0), (2, 64.0, 70.0), (3, 63.0, 80.0), (4, 61.5, 90.0))
    ]
    assert overfitting({"curve": curve}) == {"epochs": 4, "best_epoch": 2, "fall": 2.5, "gap": 28.5}
    rows = {
        f"ms-{mixup}-s{seed}": {"loss": "ms", "mixup": mixup, "seed": seed, "curve": curve}
        for mixup in ("feature", "none")
        for seed in (0, 1)
    }
    folder = tmp_path / "small-folders-cpu-cub100-5"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(rows))
    none, feature = overfitting_rows(folder)
    assert none == "| cpu-cub100-5 | ms | none | 2 | 4 | 2 (2-2) | 2.50 | 2 of 2 | +28.50 |"
    assert "| feature |" in feature


def test_small_folders_schedule_check_wants_an_inside_peak_and_a_fall(tmp_path):
    from small_folders_summary import schedule_check, trained_epochs

    def folder(name, values):
        curve = [{"epoch": e, "val_map_at_r": v} for e, v in enumerate(values, 1)]
        row = {"loss": "ms", "mixup": "none", "seed": 0, "settings": {"epochs": len(values)}, "curve": curve}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"floor": {}, "ms-none-s0": row}))
        (tmp_path / name / "ms-none-s0.json").write_text(json.dumps({"recipe": "cpu", "epochs": len(values)}))
        return tmp_path / name

    ok, why = schedule_check(folder("falls", [60, 64, 63, 62.5]))  # peak at 2 of 4, falls 1.5
    assert ok and why.endswith("long enough: over-fits")
    assert not schedule_check(folder("late", [60, 61, 62, 64, 63.0]))[0]  # peak at 4 of 5 and falls 1: neither
    assert not schedule_check(folder("rising", [60, 61, 62, 63, 64, 65, 66, 67]))[0]  # +2 in the last quarter
    # cub100 at 5 per class: an early dip, a climb, then a plateau (+0.1 over the last quarter)
    ok, why = schedule_check(folder("plateau", [66.5, 64.5, 65.5, 66.6, 67.2, 67.5, 67.5, 67.6]))
    assert ok and why.endswith("moves +0.10 over the last quarter: long enough: converged without over-fitting")
    assert trained_epochs(tmp_path / "late") == 5
