"""A training run killed (SIGKILL) after its first epoch and resumed ends with exactly the
weights of the same run left alone."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from metrix.training.tensorboard_log import tag

from .training_helpers import metrix_cli, tiny_dataset, write_config


def _start_train(data, config, out):
    return subprocess.Popen(
        [sys.executable, "-m", "metrix", "train", "--data", data, "--config", config, "--out", out, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_kill_after_epoch_one_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    config = write_config(tmp_path / "config.json", epochs=3, log="tensorboard")

    killed = tmp_path / "killed"
    process = _start_train(data, config, killed)
    deadline = time.monotonic() + 300
    while not (killed / "latest").exists():
        assert process.poll() is None, f"training ended before its first checkpoint:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (killed / "latest").read_text() == "epoch-0001", "the kill came too late to test resuming after epoch 1"
    assert not (killed / "checkpoints" / "epoch-0003").exists()

    resumed = metrix_cli("train", "--resume", killed, "--no-progress")
    assert "resuming" in resumed.stdout and "after epoch 1 of 3" in resumed.stdout

    straight = tmp_path / "straight"
    metrix_cli("train", "--data", data, "--config", config, "--out", straight, "--no-progress")

    a = load_file(killed / "checkpoints" / "epoch-0003" / "model.safetensors")
    b = load_file(straight / "checkpoints" / "epoch-0003" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resuming, e.g. {different[:3]}"
    # The epoch logs agree too (timings aside): one line per epoch, none repeated.
    assert _log_without_timings(killed) == _log_without_timings(straight)
    assert [r["epoch"] for r in _log_without_timings(killed)] == [1, 2, 3]
    # So do the TensorBoard scalars, read back with TensorBoard's own reader: every number of
    # metrics.jsonl at its epoch, once (the resumed run purged what it repeats).
    for run in (killed, straight):
        scalars = _tensorboard_scalars(run)
        for record in _log_without_timings(run):
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    at_epoch = [v for step, v in scalars[tag(key)] if step == record["epoch"]]
                    assert len(at_epoch) == 1 and math.isclose(at_epoch[0], value, rel_tol=1e-6), (run, key, at_epoch)


def _tensorboard_scalars(run) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(epoch, value), ...] from the run's event files, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {name: [(e.step, e.value) for e in events.Scalars(name)] for name in events.Tags()["scalars"]}


def _log_without_timings(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]
