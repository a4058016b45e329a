"""Checkpoints: atomic folders, pointers, pruning, and clear errors for broken ones."""

import json

import pytest
import torch

from metrix.training.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint


def _save(run, epoch, best=False, value=1.0):
    state = {"model.w": torch.full((2, 2), value)}
    return save_checkpoint(run, epoch, state, {"epoch": epoch}, {"epoch": epoch - 1}, is_best=best, keep_last=2)


def test_pointers_and_pruning(tmp_path):
    _save(tmp_path, 1, best=True)
    for epoch in (2, 3, 4):
        _save(tmp_path, epoch, value=float(epoch))
    assert (tmp_path / "latest").read_text() == "epoch-0004"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0003", "epoch-0004"]
    assert load_checkpoint(tmp_path, "best").config == {"epoch": 1}
    latest = load_checkpoint(tmp_path)
    assert torch.equal(latest.model_state["model.w"], torch.full((2, 2), 4.0)) and latest.trainer_state() == {
        "epoch": 3
    }
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_kill_between_the_pointers_never_leaves_latest_without_its_best(tmp_path, monkeypatch):
    """The kill lands after the first pointer of an epoch that is best: `latest` must not name it
    yet (a resumed run would otherwise end with no best checkpoint to measure or export)."""
    from metrix.training import checkpoint

    written = []

    def killed_after_the_first(path, text):
        written.append(path.name)
        path.write_text(text)
        raise KeyboardInterrupt  # stands for the SIGKILL: nothing after this line runs

    monkeypatch.setattr(checkpoint, "write_atomically", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 1, best=True)
    assert written == ["best"] and not (tmp_path / "latest").exists()


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no latest checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="is not a run directory"):
        load_checkpoint(tmp_path / "nope")
    path = _save(tmp_path, 1)
    (path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted"):
        load_checkpoint(tmp_path)
    (path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_checkpoint(tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_checkpoint(tmp_path)


def test_build_model_refuses_a_config_it_cannot_build(tmp_path):
    path = _save(tmp_path, 1)
    (path / "config.json").write_text(
        json.dumps({"model": {"backbone": "vgg99", "embedding_size": 8, "preprocessing": {}}})
    )
    with pytest.raises(CheckpointError, match="cannot be built"):
        build_model(load_checkpoint(tmp_path))


def _run(run, val_classes):
    """Three epochs as the trainer writes them; epoch 1 is the best one."""
    for epoch in (1, 2, 3):
        metrics = {"val_map_at_r": 40.0 + epoch} if val_classes else {}
        config = {"epoch": epoch, "data": {"val_classes": val_classes}, "metrics": metrics}
        save_checkpoint(run, epoch, {"model.w": torch.full((2, 2), float(epoch))}, config, {}, is_best=epoch == 1)
    return run


def test_best_is_chosen_on_validation(tmp_path):
    run = _run(tmp_path, ["a", "b"])
    best = load_checkpoint(run, "best")
    assert (
        best.path.name == "epoch-0001"
        and best.choice == "using checkpoint epoch-0001 (best on validation classes, val MAP@R 41.0)"
    )
    assert load_checkpoint(run, "latest").choice == "using checkpoint epoch-0003 (latest, val MAP@R 43.0)"
    assert load_checkpoint(run, "epoch-0003").choice == "using checkpoint epoch-0003 (val MAP@R 43.0)"


def test_best_without_a_validation_split_is_latest_and_says_so(tmp_path):
    run = _run(tmp_path, [])
    assert (run / "best").read_text() == "epoch-0001"  # the trainer's best followed the training loss
    best = load_checkpoint(run, "best")
    assert best.path.name == "epoch-0003" and best.choice == "run has no validation split: using latest (epoch-0003)"
    assert load_checkpoint(run, "epoch-0001").choice == "using checkpoint epoch-0001"
