"""`metrix export` of a trained run: its checkpoint (training's format) into the exporter
(export/onnx_export.py), verified on its own test images, and int8 on request. The one place that
joins a training run to the export package."""

from __future__ import annotations

from pathlib import Path

import torch

from metrix import __version__
from metrix.evaluation.card import read_card
from metrix.export.onnx_export import OPSET, ExportError, ImageEmbedder, Parity, export_verified
from metrix.export.runtime import ModelMetadata, file_sha256
from metrix.training.checkpoint import MODEL_FILE, Checkpoint, build_model, load_checkpoint


def describe(checkpoint: Checkpoint, model) -> ModelMetadata:
    config, pre = checkpoint.config, model.preprocessing
    data = config.get("data", {})
    card = read_card(checkpoint.path.parents[1]) or {}
    return ModelMetadata(
        image_size=pre.image_size,
        resize_size=pre.resize_size,
        interpolation=pre.interpolation,
        embedding_size=model.embedding_size,
        backbone=config["model"]["backbone"],
        loss=config.get("loss", "?"),
        mixup=config.get("mixup", "?"),
        labels=config.get("labels", "folder"),
        flip=config.get("train_config", {}).get("flip", True),  # runs from before the setting flipped
        training_data=f"{data.get('name', '?')}:{data.get('root', '?')}",
        train_classes=len(data.get("train_classes", [])),
        weights_sha256=file_sha256(checkpoint.path / MODEL_FILE),
        metrix_version=__version__,
        checkpoint=str(checkpoint.path),
        exporter=f"torch.onnx dynamo (torch {torch.__version__})",
        opset=OPSET,
        floor_check=card.get("floor_check") if card.get("checkpoint") == checkpoint.path.name else None,
    )


def export_checkpoint(ckpt: Checkpoint, output: Path, sample_paths: list[Path]) -> tuple[ModelMetadata, list[Parity]]:
    """Export, check and verify a checkpoint; the file appears at `output` only if all passed."""
    model = build_model(ckpt)
    return export_verified(ImageEmbedder(model).eval(), describe(ckpt, model), output, sample_paths)


def export_run(
    run_dir: Path | str,
    output: Path | str | None = None,
    checkpoint: str = "best",
    quantize: str | None = None,
    max_r1_drop: float = 1.0,
    int8_form: str | None = None,
) -> dict:
    """`metrix export`: the run's checkpoint (default: the one chosen on the validation classes,
    latest where the run has none) to ONNX (default: model.onnx in the checkpoint folder),
    verified on images of its test split (seeded noise where its data is unreachable); with
    quantize="int8", also model.int8.onnx in `int8_form` with its measured R@1 change."""
    from metrix.export.quantize import DEFAULT_FORM, Int8Form

    try:
        form = Int8Form.parse(int8_form) if int8_form else DEFAULT_FORM
    except ValueError as error:
        raise ExportError(f"--int8-form: {error}") from None
    ckpt = load_checkpoint(run_dir, checkpoint)
    output = Path(output) if output is not None else ckpt.path / "model.onnx"
    data = run_data(ckpt)
    metadata, parity = export_checkpoint(ckpt, output, [s.path for s in data.test.samples] if data else [])
    report = {
        "model": str(output),
        "checkpoint_choice": ckpt.choice,
        "metadata": metadata,
        "parity": parity,
        "verified_on": f"{data.name} test images" if data else "seeded noise images (the run's data is not reachable)",
    }
    if quantize is not None:
        if quantize != "int8":
            raise ExportError(f"--quantize {quantize}: only int8 is supported")
        if data is None:
            raise ExportError(
                f"{output}: written; --quantize int8 needs the run's data to calibrate and measure on, "
                f"and {metadata.training_data} is not reachable"
            )
        from metrix.export.quantize import quantize_run

        report["int8"] = quantize_run(output, data, max_r1_drop=max_r1_drop, form=form)
    return report


def run_data(checkpoint: Checkpoint):
    """The run's data splits (metrix.datasets.RetrievalData), or None where the data is not
    reachable from here (an export still verifies, on seeded noise images)."""
    from metrix.datasets import DataError
    from metrix.training.config import ConfigError, TrainConfig
    from metrix.training.data import load_training_data

    try:
        return load_training_data(TrainConfig.from_dict(checkpoint.config["train_config"]), log=lambda *a, **k: None)
    except (DataError, ConfigError, KeyError, TypeError, OSError):
        return None
