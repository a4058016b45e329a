"""Several processes train as one process with the same global batch.

The exact check is on gradients: two gloo processes (torchrun), each with half of a batch, gather
features and labels and average gradients; every parameter's gradient must equal the
single-process gradient on the whole batch. (Weights after Adam cannot show this: Adam divides
each step by the gradient's running scale, so it hides scale errors and turns float noise in
near-zero gradients into full-size steps.) The end-to-end check runs `torchrun -m metrix train`.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metrix.losses import MultiSimilarityLoss, ProxyAnchorLoss
from metrix.mixup import Metrix

from .test_metrix import TinySplitModel
from .training_helpers import metrix_cli, tiny_dataset, write_config

pytestmark = pytest.mark.slow  # the fast lane (pytest -m 'not slow') leaves these out

TORCHRUN = Path(sys.executable).with_name("torchrun")
REPO = Path(__file__).resolve().parents[1]
GRADIENT_ATOL = 1e-5


def setup(make_loss):
    torch.manual_seed(0)
    model = TinySplitModel(dim=8)
    metrix = Metrix(make_loss(), mode="feature", seed=3)
    images = torch.randn(12, 3, 6, 6)
    labels = torch.arange(6).repeat_interleave(2)
    return model, metrix, images, labels


def gradients(model, metrix):
    named = [*model.named_parameters(), *(("loss." + n, p) for n, p in metrix.loss.named_parameters())]
    return {name: p.grad.clone() for name, p in named}


LOSSES = {"ms": MultiSimilarityLoss, "pa": lambda: ProxyAnchorLoss(6, 8)}


def _torchrun(*args, **kwargs):
    return subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kwargs,
    )


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_two_process_gradients_equal_one_process(tmp_path, loss_name):
    result = _torchrun("-m", "tests.ddp_gradient_worker", tmp_path / "out.pt", loss_name, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_as_one_process(torch.load(tmp_path / "out.pt"), loss_name)


def test_two_nodes_through_the_c10d_rendezvous(tmp_path):
    """The multi-node path (docs/training.md): two torchrun agents, one process each, meet through
    a c10d rendezvous on localhost as two machines would through one node's address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        TORCHRUN,
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"127.0.0.1:{port}",
        "--rdzv_id",
        "metrix-test",
        "-m",
        "tests.ddp_gradient_worker",
        str(tmp_path / "out.pt"),
        "ms",
    ]
    nodes = [
        subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    assert_same_as_one_process(torch.load(tmp_path / "out.pt"), "ms")


def assert_same_as_one_process(two: dict, loss_name: str) -> None:
    assert two["world_size"] == 2  # else two lone processes would pass vacuously
    model, metrix, images, labels = setup(LOSSES[loss_name])
    out = metrix(model, images, labels, lam=0.35)
    out.loss.backward()
    one = gradients(model, metrix)

    torch.testing.assert_close(two["loss"], out.loss.detach(), atol=1e-6, rtol=1e-6)
    assert one.keys() == two["grads"].keys()
    for name in one:
        assert one[name].abs().max() > 0, f"{name} got no gradient: the test would be vacuous"
        torch.testing.assert_close(two["grads"][name], one[name], atol=GRADIENT_ATOL, rtol=1e-4, msg=name)


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_train_like_one(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    config = write_config(tmp_path / "config.json", epochs=2, num_workers=0, lr=1e-3)
    one, two = tmp_path / "one", tmp_path / "two"
    metrix_cli("train", "--data", data, "--config", config, "--out", one, "--no-progress")
    result = _torchrun("-m", "metrix", "train", "--data", data, "--config", config, "--out", two, "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 processes" in result.stdout and result.stdout.count("epoch 2/2") == 1  # only rank 0 reports
    assert len(_losses(two)) == 2  # and only rank 0 writes the log

    # Stated tolerance, end to end: epoch 1 (head only) agrees to 1e-5 relative, epoch 2 to 1e-2.
    # Beyond that the runs drift as Adam amplifies float-order noise in near-zero gradients
    # (measured: drift about 0.23 of what epoch 2 moves the weights); exactness is shown above,
    # on gradients, so the weight check here is only a sanity bound.
    assert _losses(two)[0] == pytest.approx(_losses(one)[0], rel=1e-5)
    assert _losses(two)[1] == pytest.approx(_losses(one)[1], rel=1e-2)
    start = load_file(one / "checkpoints" / "epoch-0001" / "model.safetensors")
    a = load_file(one / "checkpoints" / "epoch-0002" / "model.safetensors")
    b = load_file(two / "checkpoints" / "epoch-0002" / "model.safetensors")
    drift = sum(((a[k] - b[k]).float() ** 2).sum() for k in a) ** 0.5
    moved = sum(((a[k] - start[k]).float() ** 2).sum() for k in a) ** 0.5
    assert drift < 0.5 * moved, f"runs differ by {drift:.3g}, training moved {moved:.3g}"
