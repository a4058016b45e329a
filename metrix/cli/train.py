"""`metrix train` and `metrix evaluate`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .base import app, fail, path_str

DataOption = Annotated[
    Optional[Path],
    typer.Option(
        rich_help_panel="Data",
        help="An image folder, one sub-folder per class (with --labels none: any folder of images).",
    ),
]
DatasetOption = Annotated[
    Optional[str], typer.Option(rich_help_panel="Data", help="A benchmark: cub, cars, sop or inshop.")
]
DataRootOption = Annotated[
    Optional[Path], typer.Option(rich_help_panel="Data", help="Where the benchmark was downloaded.")
]
TrainClassesOption = Annotated[
    Optional[str], typer.Option(rich_help_panel="Data", help="Image folder: N first classes, or names a,b,c.")
]
SplitFileOption = Annotated[
    Optional[Path], typer.Option(rich_help_panel="Data", help='Image folder: JSON {"train": [...], "test": [...]}.')
]
ValFractionOption = Annotated[
    Optional[float],
    typer.Option(
        rich_help_panel="Data", help="Share of training classes held out for validation (without labels: of images)."
    ),
]
TrainImagesPerClassOption = Annotated[
    Optional[int],
    typer.Option(
        rich_help_panel="Data",
        help="Keep N images of each training class (drawn with --seed; validation and test classes whole): a small folder from a large one. \\[default: all]",
    ),
]
FeedbackOption = Annotated[
    Optional[Path],
    typer.Option(
        rich_help_panel="Data",
        help="An index folder `metrix serve` kept marked queries in: train on the marks (a query and its "
        "right-marked images one class; wrong-marked ones apart) of the gallery --data names (docs/feedback.md).",
    ),
]
LabelsOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Data",
        help="folder (one sub-folder per class), or none to train without labels: instances (each image its own class) or clusters (k-means pseudo-labels); none picks the one measured best. \\[default: folder]",
    ),
]
ClustersOption = Annotated[
    Optional[int],
    typer.Option(
        rich_help_panel="Data",
        help="--labels clusters: how many. \\[default: one per 20 images, at least the classes of a batch]",
    ),
]
ReclusterEveryOption = Annotated[
    Optional[int],
    typer.Option(rich_help_panel="Data", help="--labels clusters: redraw the clusters every N epochs. \\[default: 2]"),
]
LossOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Loss and Metrix",
        help="contrastive, ms, pa, or pml-ms (pytorch-metric-learning's MS loss, a peer; --mixup none). \\[default: ms]",
    ),
]
MixupOption = Annotated[
    Optional[str],
    typer.Option(rich_help_panel="Loss and Metrix", help="none, input, feature or embed. \\[default: feature]"),
]
BackboneOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Model",
        help="A registered backbone, or timm:NAME for any timm model (`metrix backbones` lists them). \\[default: efficientnet_lite0]",
    ),
]
PretrainedOption = Annotated[
    Optional[bool], typer.Option("--pretrained/--no-pretrained", rich_help_panel="Model", help="Pretrained weights.")
]
WeightsOption = Annotated[
    Optional[Path],
    typer.Option(
        rich_help_panel="Model",
        help="A timm backbone's pretrained weights from this file (safetensors or a timm checkpoint) instead of the hub.",
    ),
]
EmbeddingSizeOption = Annotated[
    Optional[int],
    typer.Option(rich_help_panel="Model", help="\\[default: 512; recipe cpu: the backbone's feature width]"),
]
ImageSizeOption = Annotated[
    Optional[int], typer.Option(rich_help_panel="Model", help="Input size. \\[default: the backbone's]")
]
FlipOption = Annotated[
    Optional[bool],
    typer.Option(
        "--flip/--no-flip",
        rich_help_panel="Model",
        help="Random left-right flips in the training augmentation. \\[default: measured on the data before training: off where mirror images look like other classes (docs/training.md#flips)]",
    ),
]
EpochsOption = Annotated[Optional[int], typer.Option(rich_help_panel="Schedule", help="\\[default: 10]")]
BatchSizeOption = Annotated[Optional[int], typer.Option(rich_help_panel="Schedule", help="\\[default: 100]")]
SamplesPerClassOption = Annotated[
    Optional[int], typer.Option(rich_help_panel="Schedule", help="K images per class in a batch. \\[default: 5]")
]
SamplerOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Schedule",
        help="balanced (P classes x K images) or random (the paper's for CUB and Cars). \\[default: balanced]",
    ),
]
PairChoiceOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Loss and Metrix",
        help="Metrix pairs: all (positive-negative and anchor-negative every step) or coin (the official code's: one kind per step). \\[default: all]",
    ),
]
PrecisionOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Schedule",
        help="fp32, or bf16 autocast of the backbone (CPUs with AMX / AVX512-BF16, GPUs). \\[default: fp32]",
    ),
]
LrOption = Annotated[Optional[float], typer.Option(rich_help_panel="Schedule", help="\\[default: 1e-4]")]
SeedOption = Annotated[Optional[int], typer.Option(rich_help_panel="Schedule", help="\\[default: 0]")]
NumWorkersOption = Annotated[
    Optional[int], typer.Option(rich_help_panel="Schedule", help="Image decoding processes. \\[default: 2]")
]
OutOption = Annotated[
    Optional[Path],
    typer.Option(
        rich_help_panel="Output and settings", help="Run directory. \\[default: runs/<time>-<data>-<loss>-<mixup>]"
    ),
]
ConfigOption = Annotated[
    Optional[Path],
    typer.Option(rich_help_panel="Output and settings", help="A JSON or TOML file of settings (flags override it)."),
]
RecipeOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Output and settings",
        help="cpu (cached frozen stages), full-cpu (the whole network trains at 96 px), full (the whole backbone at its own size, the default with a GPU) or paper (ResNet-50, the paper's protocol); docs/training.md says which is the default without a GPU and why.",
    ),
]
ResumeOption = Annotated[
    Optional[Path],
    typer.Option(
        rich_help_panel="Output and settings", help="Continue the run in this directory from its last checkpoint."
    ),
]
LogOption = Annotated[
    Optional[str],
    typer.Option(
        rich_help_panel="Output and settings",
        help="tensorboard: also write each epoch's losses, learning rate and metrics as TensorBoard scalars in RUN/tensorboard (the tensorboard extra). metrics.jsonl and curves.png are always written.",
    ),
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", rich_help_panel="Output and settings", help="Show a progress bar.")
]
FloorCheckOption = Annotated[
    bool,
    typer.Option(
        "--floor-check/--no-floor-check",
        rich_help_panel="Output and settings",
        help="At the end, compare the chosen checkpoint with the untrained backbone on the validation classes and write RUN/model_card.json (build-index chooses its default model by it).",
    ),
]


@app.command()
def train(
    data: DataOption = None,
    dataset: DatasetOption = None,
    data_root: DataRootOption = None,
    train_classes: TrainClassesOption = None,
    split_file: SplitFileOption = None,
    val_fraction: ValFractionOption = None,
    train_images_per_class: TrainImagesPerClassOption = None,
    feedback: FeedbackOption = None,
    labels: LabelsOption = None,
    clusters: ClustersOption = None,
    recluster_every: ReclusterEveryOption = None,
    loss: LossOption = None,
    mixup: MixupOption = None,
    backbone: BackboneOption = None,
    pretrained: PretrainedOption = None,
    weights: WeightsOption = None,
    embedding_size: EmbeddingSizeOption = None,
    image_size: ImageSizeOption = None,
    flip: FlipOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    samples_per_class: SamplesPerClassOption = None,
    sampler: SamplerOption = None,
    pair_choice: PairChoiceOption = None,
    precision: PrecisionOption = None,
    lr: LrOption = None,
    seed: SeedOption = None,
    num_workers: NumWorkersOption = None,
    out: OutOption = None,
    config: ConfigOption = None,
    recipe: RecipeOption = None,
    resume: ResumeOption = None,
    log: LogOption = None,
    progress: ProgressOption = True,
    floor_check: FloorCheckOption = True,
) -> None:
    """Train a Metrix embedding model. With no data, trains on the built-in synthetic dataset."""
    # every option but these four is a setting of the same name (paths as text)
    given_values = {
        name: value for name, value in locals().items() if name not in ("config", "resume", "progress", "floor_check")
    }
    from metrix.backbones import BackboneError
    from metrix.datasets import DataError
    from metrix.training.checkpoint import CheckpointError
    from metrix.training.config import ConfigError, explain_choices, read_config_file, resolve_config
    from metrix.training.trainer import train as run_training

    flags = {name: path_str(value) if isinstance(value, Path) else value for name, value in given_values.items()}
    try:
        if resume is not None:
            given = [k for k, v in flags.items() if v is not None] + (["config"] if config else [])
            if given:
                raise ConfigError(
                    f"--resume continues a run with its own settings; drop {', '.join('--' + g.replace('_', '-') for g in given)}"
                )
            run_dir = run_training(None, resume=resume, progress=progress)
        else:
            resolved = resolve_config(config, **flags)
            given = {k for k, v in flags.items() if v is not None} | set(read_config_file(config) if config else ())
            run_dir = run_training(resolved, progress=progress, why=explain_choices(resolved, given))
        if floor_check and os.environ.get("RANK", "0") == "0":  # torchrun: the main process only
            _check_against_floor(run_dir)
    except (ConfigError, DataError, BackboneError, CheckpointError) as error:
        fail(error)


def _check_against_floor(run_dir: Path) -> None:
    from metrix.evaluation.card import describe
    from metrix.evaluation.floor_check import check_against_floor

    for line in describe(check_against_floor(run_dir)):
        typer.echo(line)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by metrix train.")],
    checkpoint: Annotated[
        str,
        typer.Option(
            help="best (chosen on the validation classes; latest where the run has no validation split), latest, or a checkpoint folder name."
        ),
    ] = "best",
    data: Annotated[Optional[Path], typer.Option(help="Evaluate on this image folder's test classes instead.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Or on this benchmark's test split.")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Where that benchmark was downloaded.")] = None,
    floor: Annotated[bool, typer.Option("--floor", help="Also evaluate the untrained pretrained backbone.")] = False,
    against_floor: Annotated[
        bool,
        typer.Option(
            "--against-floor",
            help="Instead: compare the run's chosen checkpoint with the untrained backbone on its validation classes and (re)write RUN/model_card.json, as metrix train does at its end.",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    report: Annotated[
        Optional[Path],
        typer.Option(
            help="Also write an HTML report here: the metrics next to the floor (implies --floor), R@1 per class, the most confused classes, the worst queries with their neighbours."
        ),
    ] = None,
) -> None:
    """Recall@K, MAP@R, R-precision, NMI and utilization of a trained run on unseen classes."""
    import json

    from metrix.backbones import BackboneError
    from metrix.datasets import DataError
    from metrix.evaluation.report import ReportError, check_writable, render_html, report_data, write_report
    from metrix.evaluation.run import evaluate_run, format_table
    from metrix.training.checkpoint import CheckpointError

    log = (lambda *a, **k: None) if json_output else print
    try:
        if against_floor:
            _check_against_floor(run_dir)
            return
        if report is not None:
            floor = True
            check_writable(report)
            content = report_data(run_dir, checkpoint, path_str(data), dataset, path_str(data_root), log=log)
            write_report(report, render_html(content))
            reports = [content.trained, content.floor]
        else:
            reports = [evaluate_run(run_dir, checkpoint, path_str(data), dataset, path_str(data_root), log=log)]
            if floor:
                reports.append(
                    evaluate_run(run_dir, checkpoint, path_str(data), dataset, path_str(data_root), floor=True, log=log)
                )
    except (DataError, CheckpointError, BackboneError, ReportError) as error:
        fail(error)
    if json_output:
        typer.echo(json.dumps(reports[0] if not floor else {"trained": reports[0], "floor": reports[1]}, indent=2))
        return
    first = reports[0]
    typer.echo(
        f"{first['run']} on {first['data']}, {first['split']}: {first['num_queries']} queries, "
        f"{first['num_classes']} classes"
    )
    for line in format_table(reports):
        typer.echo(line)
    if report is not None:
        typer.echo(f"wrote {report}")
