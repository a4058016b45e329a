"""`metrix export`: a trained run (or an untrained backbone) to ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from metrix.export.quantize import DEFAULT_FORM
from metrix.machine import cpu_name

from .base import app, fail, path_str

RunDirOption = Annotated[Optional[Path], typer.Argument(help="A run directory written by metrix train.")]
OutputOption = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Where to write the model. \\[default: model.onnx in the checkpoint folder; with --backbone, models/NAME-floor.onnx]",
    ),
]
CheckpointOption = Annotated[
    str,
    typer.Option(
        help="best (chosen on the validation classes; latest where the run has no validation split), latest, or a checkpoint folder name."
    ),
]
QuantizeOption = Annotated[
    Optional[str],
    typer.Option(help="int8: also write MODEL.int8.onnx, with its R@1 change measured on the test split."),
]
MaxR1DropOption = Annotated[float, typer.Option(help="Refuse an int8 model that loses more R@1 points than this.")]
Int8FormOption = Annotated[
    str,
    typer.Option(
        help="How int8 quantises (docs/export.md): u8s8-7bit-per-channel gives the same answers on every x86 CPU; "
        "u8s8-per-channel is closer to fp32 but only on CPUs with VNNI or AMX."
    ),
]
BackboneOption = Annotated[
    Optional[str],
    typer.Option(
        help="Instead of a run: this backbone untrained (its pooled pretrained features, the floor), to search with no training."
    ),
]
ImageSizeOption = Annotated[Optional[int], typer.Option(help="--backbone: input size. \\[default: the backbone's]")]
WeightsOption = Annotated[
    Optional[Path], typer.Option(help="--backbone timm:NAME: its pretrained weights from this file.")
]
PretrainedOption = Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="--backbone: pretrained weights.")]


@app.command("export")
def export_(
    run_dir: RunDirOption = None,
    output: OutputOption = None,
    checkpoint: CheckpointOption = "best",
    quantize: QuantizeOption = None,
    max_r1_drop: MaxR1DropOption = 1.0,
    int8_form: Int8FormOption = DEFAULT_FORM.name,
    backbone: BackboneOption = None,
    image_size: ImageSizeOption = None,
    weights: WeightsOption = None,
    pretrained: PretrainedOption = True,
) -> None:
    """Export a trained run (or, with --backbone, an untrained backbone) to ONNX: uint8 NHWC images in, L2-normalised embeddings out, verified against PyTorch."""
    from metrix.backbones import BackboneError
    from metrix.export.onnx_export import ExportError, export_backbone
    from metrix.export.runtime import ModelError
    from metrix.training.checkpoint import CheckpointError

    from .run_export import export_run

    if (run_dir is None) == (backbone is None):
        fail("give a run directory or --backbone NAME (exactly one)")
    if backbone is None and (image_size or weights or not pretrained):
        fail("--image-size, --weights and --no-pretrained go with --backbone; a run's model keeps its own")
    try:
        if backbone is not None:
            from metrix.cli.models import floor_model_path

            output = output or floor_model_path(backbone)
            metadata, parity = export_backbone(backbone, output, image_size, pretrained, path_str(weights))
            report = {
                "model": str(output),
                "metadata": metadata,
                "parity": parity,
                "verified_on": "seeded noise images",
                "checkpoint_choice": f"{backbone} with no training: its pooled features, L2-normalised",
            }
        else:
            report = export_run(run_dir, output, checkpoint, quantize, max_r1_drop, int8_form)
    except (CheckpointError, ExportError, ModelError, BackboneError) as error:
        fail(error)
    meta = report["metadata"]
    typer.echo(report["checkpoint_choice"])
    typer.echo(f"wrote {report['model']}")
    typer.echo(
        f"  input   images: {meta.input_layout} [batch, {meta.image_size}, {meta.image_size}, 3]; {meta.resize_policy}"
    )
    typer.echo(f"  output  embeddings: float32 [batch, {meta.embedding_size}], L2-normalised")
    typer.echo(
        f"  output  cells: float32 [batch, h, w, {meta.embedding_size}], each location of the last feature map "
        "embedded alone (the heat maps of `metrix explain`)"
    )
    typer.echo(
        f"  model   {meta.backbone}, loss {meta.loss}, mixup {meta.mixup}"
        + ("" if meta.flip is None else f", flips {'on' if meta.flip else 'off'}")
        + f": {meta.provenance}; "
        f"weights sha256 {meta.weights_sha256[:16]}"
    )
    typer.echo(f"  graph   {meta.exporter}, opset {meta.opset}; onnx.checker (full) passed")
    for parity in report["parity"]:
        typer.echo(f"  parity  onnxruntime vs PyTorch, {parity} ({report['verified_on']})")
    if "int8" in report:
        q = report["int8"]
        typer.echo(f"wrote {q['model']}")
        typer.echo(
            f"  int8    R@1 on {q['data']} {q['split']} ({q['num_queries']} queries): fp32 {q['recall_at_1_fp32']:.2f}, "
            f"int8 {q['recall_at_1_int8']:.2f} ({q['recall_at_1_change']:+.2f})"
        )
        typer.echo(f"  int8    against fp32 on the same images: {q['agreement']}")
        speedup = q["ms_per_image_fp32"] / q["ms_per_image_int8"]
        typer.echo(
            f"  int8    form {q['form']}, verified on {q['kernels']} kernels ({cpu_name()}): computes its own "
            f"definition to cosine {q['fidelity'].mean_cosine:.4f}; {q['ms_per_image_int8']:.1f} ms/image against "
            f"fp32's {q['ms_per_image_fp32']:.1f} ({speedup:.2f}x)"
            + ("" if speedup > 1 else "; not faster here: serve the fp32 model on this CPU")
        )
