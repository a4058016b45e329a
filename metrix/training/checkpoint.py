"""Checkpoints, one per epoch: RUN/checkpoints/epoch-NNNN/{model.safetensors, config.json,
trainer_state.pt}, written into a temporary folder and renamed into place, then named by the
RUN/latest (and RUN/best) pointer files, which are replaced atomically too. A run killed at any
moment keeps its previous checkpoint intact."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import fsync_path, write_atomically

MODEL_FILE, CONFIG_FILE, TRAINER_STATE_FILE = "model.safetensors", "config.json", "trainer_state.pt"


class CheckpointError(ValueError):
    """A run or checkpoint that cannot be loaded; the message is one line."""


@dataclass
class Checkpoint:
    path: Path
    config: dict
    model_state: dict[str, torch.Tensor]
    #: How it was chosen, for the user: "using checkpoint epoch-0007 (best on validation classes, ...)".
    choice: str = ""

    def trainer_state(self) -> dict:
        try:
            return torch.load(self.path / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as error:
            raise CheckpointError(
                f"{self.path / TRAINER_STATE_FILE}: cannot read the optimizer state ({error})"
            ) from None


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    model_state: dict,
    config: dict,
    trainer_state: dict,
    is_best: bool = False,
    keep_last: int = 2,
) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"epoch-{epoch:04d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / MODEL_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
    torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    for name in (CONFIG_FILE, TRAINER_STATE_FILE, MODEL_FILE):
        fsync_path(tmp / name)
    if final.exists():  # the same epoch again, after a resume from an earlier one
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(folder)
    # best before latest: a run killed between the two never has a latest epoch without its best
    if is_best:
        write_atomically(run_dir / "best", final.name)
    write_atomically(run_dir / "latest", final.name)
    _prune(run_dir, keep_last)
    return final


def load_checkpoint(run_dir: Path | str, which: str = "latest") -> Checkpoint:
    """which: "latest", "best", or a checkpoint folder name such as epoch-0003. "best" is the one
    chosen on the validation classes; a run without a validation split has none, and "best"
    falls back to "latest" (its `choice` says so)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory")
    which, reason = resolve_checkpoint(run_dir, which)
    path = run_dir / "checkpoints" / which
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is missing {name}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except ValueError as error:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({error})") from None
    try:
        model_state = load_file(path / MODEL_FILE)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path / MODEL_FILE} is corrupted ({error})") from None
    return Checkpoint(path, config, model_state, _describe_choice(which, reason, config))


def resolve_checkpoint(run_dir: Path, which: str) -> tuple[str, str]:
    """(checkpoint folder name, why it was chosen) for "latest", "best" or a folder name."""
    if which not in ("latest", "best"):
        return which, ""
    latest = _read_pointer(run_dir, "latest")  # every run with a checkpoint has it
    if which == "latest":
        return latest, "latest"
    data = _run_data(run_dir / "checkpoints" / latest)
    if data.get("val_classes") == [] and not data.get("num_val_images"):
        return latest, "no validation split"
    if data.get("val_classes") == []:  # trained without labels: validated on held-out images
        return _read_pointer(run_dir, "best"), "best view agreement on held-out images"
    return _read_pointer(run_dir, "best"), "best on validation classes"


def _read_pointer(run_dir: Path, name: str) -> str:
    pointer = run_dir / name
    if not pointer.is_file():
        raise CheckpointError(f"{run_dir} has no {name} checkpoint (no {name} file): was the run trained for an epoch?")
    return pointer.read_text().strip()


def _run_data(path: Path) -> dict:
    """The data section of a checkpoint's config ({} where unreadable)."""
    try:
        return dict(json.loads((path / CONFIG_FILE).read_text())["data"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _describe_choice(name: str, reason: str, config: dict) -> str:
    if reason == "no validation split":
        return f"run has no validation split: using latest ({name})"
    details = [reason] if reason else []
    metrics = config.get("metrics") or {}
    if metrics.get("val_map_at_r") is not None:
        details.append(f"val MAP@R {metrics['val_map_at_r']:.1f}")
    elif metrics.get("val_view_agreement") is not None:
        details.append(f"view agreement {metrics['val_view_agreement']:.1f}%")
    return f"using checkpoint {name}" + (f" ({', '.join(details)})" if details else "")


def _prune(run_dir: Path, keep_last: int) -> None:
    protected = {(run_dir / p).read_text().strip() for p in ("latest", "best") if (run_dir / p).is_file()}
    epochs = sorted(p for p in (run_dir / "checkpoints").glob("epoch-*") if p.is_dir())
    for old in epochs[:-keep_last]:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)


def build_model(checkpoint: Checkpoint, pretrained: bool = False):
    """The EmbeddingModel a checkpoint describes, with its trained weights."""
    from ..backbones import BackboneError, Preprocessing
    from ..model import EmbeddingModel

    described = checkpoint.config.get("model", {})
    try:
        preprocessing = Preprocessing.from_dict(described["preprocessing"])
        model = EmbeddingModel.create(
            described["backbone"], described["embedding_size"], pretrained, preprocessing.image_size
        )
        model.backbone.preprocessing = preprocessing
    except (KeyError, TypeError, BackboneError) as error:
        raise CheckpointError(
            f"{checkpoint.path / CONFIG_FILE} describes a model that cannot be built ({error})"
        ) from None
    state = {k.removeprefix("model."): v for k, v in checkpoint.model_state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint.path / MODEL_FILE} does not fit the {described['backbone']} model its config describes "
            f"({str(error).splitlines()[0]})"
        ) from None
    return model.eval()
