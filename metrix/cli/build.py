"""`metrix build-index`: a gallery into an index, once or following the folder (--watch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .base import app, fail

GalleryOption = Annotated[
    str,
    typer.Argument(
        help="A folder of images, or an object-store URL such as s3://bucket/prefix (searched recursively; top-level sub-folders are labels)."
    ),
]
ModelOption = Annotated[
    Optional[Path],
    typer.Option(help="An exported model. \\[default: the newest model*.onnx of the newest run under runs/]"),
]
OutOption = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Index folder. \\[default: indexes/<gallery folder name>]")
]
IndexTypeOption = Annotated[
    Optional[str],
    typer.Option(
        help="auto (exact up to 100,000 images; above, IVF or HNSW, whichever measures faster at --target-recall; IVF-PQ when the budget asks), fastest (that measurement at any size, flat included), flat, ivf, hnsw or ivfpq. \\[default: auto, or the index's]"
    ),
]
TargetRecallOption = Annotated[
    Optional[float],
    typer.Option(
        help="Recall@10 against exact search that IVF, HNSW and IVF-PQ are tuned to, and auto chooses by, in (0, 1]. \\[default: 0.99, or the index's]"
    ),
]
MaxIndexMemoryOption = Annotated[
    Optional[str],
    typer.Option(
        help="RAM the loaded index may take, e.g. 4GB; auto then picks the index that fits. \\[default: no limit, or the index's]"
    ),
]
RebuildOption = Annotated[bool, typer.Option("--rebuild", help="Start over instead of updating.")]
AcceptWorseOption = Annotated[
    bool,
    typer.Option(
        "--accept-worse",
        help="--rebuild with another model: commit it even when it measures worse than the serving one "
        "on the kept queries' marks or the gallery's labels (docs/upgrades.md).",
    ),
]
RetuneOption = Annotated[
    bool,
    typer.Option(
        "--retune",
        help="Tune nprobe / efSearch again even if no file changed, on the queries `metrix serve` kept too (docs/index.md).",
    ),
]
BatchSizeOption = Annotated[int, typer.Option(help="Images per model call.")]
EngineOption = Annotated[str, typer.Option(help="local (this process) or ray (a Ray cluster; needs metrix[ray]).")]
RayAddressOption = Annotated[
    Optional[str],
    typer.Option(
        help="The Ray cluster to use, e.g. ray://head:10001 or auto. \\[default: RAY_ADDRESS, else a local Ray]"
    ),
]
WorkersOption = Annotated[int, typer.Option(help="--engine ray: embedding actors.")]
CpusPerWorkerOption = Annotated[
    float, typer.Option(help="--engine ray: CPUs per actor (also its onnxruntime threads).")
]
GpusPerWorkerOption = Annotated[float, typer.Option(help="--engine ray: GPUs per actor (CUDA with onnxruntime-gpu).")]
KeepOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Generations kept on disk after the build: the new one and the ones before it, so that a server still answering from the previous one can finish.",
    ),
]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
WatchOption = Annotated[
    bool,
    typer.Option(
        "--watch",
        help="After the build, follow the folder (watchdog, the watch extra) and commit a new generation whenever its files settle; a running `metrix serve` follows. Ctrl+C or SIGTERM stops.",
    ),
]
SettleOption = Annotated[
    float, typer.Option(min=0.1, help="--watch: seconds without a change before an update starts.")
]


@app.command("build-index")
def build_index_(
    gallery: GalleryOption,
    model: ModelOption = None,
    out: OutOption = None,
    index_type: IndexTypeOption = None,
    max_index_memory: MaxIndexMemoryOption = None,
    target_recall: TargetRecallOption = None,
    rebuild: RebuildOption = False,
    accept_worse: AcceptWorseOption = False,
    retune: RetuneOption = False,
    batch_size: BatchSizeOption = 64,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = 2,
    cpus_per_worker: CpusPerWorkerOption = 1.0,
    gpus_per_worker: GpusPerWorkerOption = 0.0,
    keep: KeepOption = 2,
    progress: ProgressOption = True,
    watch: WatchOption = False,
    settle: SettleOption = 1.0,
) -> None:
    """Embed a gallery (folder or object store) into a faiss index with metadata; re-runs embed only what changed."""
    from metrix.cli.models import default_index_dir
    from metrix.export.runtime import ModelError
    from metrix.index.build import build_index
    from metrix.index.plan import parse_memory
    from metrix.index.ray_engine import RayOptions
    from metrix.index.store import GalleryIndexError
    from metrix.index.upgrade_check import UpgradeRefused
    from metrix.index.upgrade_check import describe as describe_upgrade

    if engine not in ("local", "ray"):
        fail(f"--engine {engine}: choose local or ray")
    if watch and "://" in gallery:
        fail(f"--watch follows a local folder; {gallery} is an object store")
    ray = RayOptions(ray_address, workers, cpus_per_worker, gpus_per_worker, batch_size) if engine == "ray" else None
    try:
        if model is None:
            model = _default_model(gallery)
        out = out or default_index_dir(gallery)
        budget = parse_memory(max_index_memory) if max_index_memory is not None else None

        def build(first: bool = False):
            return build_index(
                gallery,
                model,
                out,
                index_type,
                rebuild and first,
                batch_size,
                progress=progress and first,
                ray=ray,
                max_memory=budget,
                keep=keep,
                target_recall=target_recall,
                retune=retune and first,
                accept_worse=accept_worse,
            )

        report = build(first=True)
    except UpgradeRefused as refused:
        for line in describe_upgrade(refused.comparison):
            typer.echo(line)
        fail(refused)
    except (GalleryIndexError, ModelError, ValueError) as error:
        fail(error)
    for line in report.summary():
        typer.echo(line)
    if watch:
        _watch(Path(gallery), out, build, settle)


def _watch(folder: Path, index_dir: Path, build, settle: float) -> None:
    """build-index --watch: an update per settled burst of changes, one line each, until a signal."""
    import signal
    import threading
    import time

    from metrix.index.watch import watch

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())

    def update() -> None:
        report = build()
        typer.echo(
            f"{time.strftime('%H:%M:%S')} {report.generation}: {report.count} images; added {report.added}, "
            f"changed {report.changed}, removed {report.removed}; {report.seconds:.1f} s"
        )
        for path, reason in report.failed[:5]:
            typer.echo(f"  skipped {path}: {reason}")

    try:
        watch(folder, update, stop, log=typer.echo, quiet=settle, ignore=index_dir)
    except RuntimeError as error:
        fail(error)
    typer.echo(f"stopped watching {folder}")


def _default_model(gallery: str) -> Path:
    from metrix.cli.models import choose_model, floor_model

    choice = choose_model(gallery)
    if choice.model is not None:
        typer.echo(f"no --model given: using {choice.model}")
        typer.echo(f"  why: {choice.why}")
        return choice.model
    model, exported = floor_model(choice.floor_backbone, image_size=choice.floor_size)
    size = f" at {choice.floor_size} px, its best size on the runs' validation classes" if choice.floor_size else ""
    typer.echo(
        f"no --model given and {choice.why}: using the untrained pretrained {choice.floor_backbone}{size} "
        f"({model}{', exported now' if exported else ''}); `metrix train --data {gallery}` (or `--labels none` "
        "without labels), then `metrix export`, gives a model fitted to these images"
    )
    return model
