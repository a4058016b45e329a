"""The `metrix` command line. Commands import their heavy dependencies only when they run."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Optional

import typer

from metrix import __version__

app = typer.Typer(
    name="metrix",
    help="Image retrieval with deep metric learning and Metrix mixup: train, export, index, search, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Packages whose versions matter for reproducing a result.
REPORTED_PACKAGES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "faiss-cpu", "gradio", "typer")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"metrix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version_: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Metrix: train an embedding model on a folder of images, index a gallery, search it."""


@app.command()
def info() -> None:
    """Print versions, threads and accelerator: what a bug report or a benchmark needs."""
    import torch

    typer.echo(f"metrix {__version__}")
    from metrix.training.report import cpu_name

    typer.echo(f"python {platform.python_version()} on {platform.platform()}")
    typer.echo(f"cpu {cpu_name()}")
    for name in REPORTED_PACKAGES:
        try:
            typer.echo(f"{name} {version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name} (not installed)")
    typer.echo(f"torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        typer.echo(f"accelerator cuda: {torch.cuda.get_device_name(0)}")
    else:
        typer.echo("accelerator none (CPU)")


@app.command()
def backbones(
    search: Annotated[Optional[str], typer.Option(help="List timm's pretrained model names that match this pattern (* wildcards).")] = None,
    download: Annotated[Optional[str], typer.Option(help="Fetch timm:NAME's pretrained weights into the local cache (needs internet) for later offline use.")] = None,
) -> None:
    """The backbones --backbone accepts, and which pretrained weights are on this machine."""
    from metrix.backbones import TIMM_PREFIX, BackboneError, list_backbones, local_weights
    from metrix.backbones.timm_backbone import RECOMMENDED, cached_timm_models, pretrained_config, weights_file

    if search is not None:
        import timm

        pattern = search if "*" in search else f"*{search}*"
        for name in timm.list_pretrained(pattern):
            typer.echo(f"{TIMM_PREFIX}{name}")
        return
    if download is not None:
        name = download.removeprefix(TIMM_PREFIX)
        try:
            path = weights_file(name, pretrained_config(name), None)
        except BackboneError as error:
            _fail(error)
        typer.echo(f"{TIMM_PREFIX}{name}: weights in {path}")
        return
    typer.echo("registered (--backbone NAME):")
    for name in list_backbones():
        found = local_weights(name)
        typer.echo(f"  {name:<20} " + (f"weights on this machine: {found}" if found else "weights downloaded on first use"))
    typer.echo("any timm model (--backbone timm:NAME[.TAG]; `metrix backbones --search PATTERN` lists the names):")
    cache_dir, cached = cached_timm_models()
    typer.echo(f"  weights cached in {cache_dir}: " + (", ".join(TIMM_PREFIX + n for n in cached) or "none"))
    typer.echo("  recommended (docs/backbones.md): " + ", ".join(TIMM_PREFIX + n for n in RECOMMENDED))


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", err=True, fg="red")
    raise typer.Exit(code=2)


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Option(help="An image folder, one sub-folder per class (with --labels none: any folder of images).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="A benchmark: cub, cars, sop or inshop.")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Where the benchmark was downloaded.")] = None,
    train_classes: Annotated[Optional[str], typer.Option(help="Image folder: N first classes, or names a,b,c.")] = None,
    split_file: Annotated[Optional[Path], typer.Option(help='Image folder: JSON {"train": [...], "test": [...]}.')] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of training classes held out for validation (without labels: of images).")] = None,
    labels: Annotated[Optional[str], typer.Option(help="folder (one sub-folder per class), or none to train without labels: instances (each image its own class) or clusters (k-means pseudo-labels); none picks the one measured best. [default: folder]")] = None,
    clusters: Annotated[Optional[int], typer.Option(help="--labels clusters: how many. [default: one per 20 images]")] = None,
    recluster_every: Annotated[Optional[int], typer.Option(help="--labels clusters: redraw the clusters every N epochs. [default: 2]")] = None,
    loss: Annotated[Optional[str], typer.Option(help="contrastive, ms, pa, or pml-ms (pytorch-metric-learning's MS loss, a peer; --mixup none). [default: ms]")] = None,
    mixup: Annotated[Optional[str], typer.Option(help="none, input, feature or embed. [default: feature]")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="A registered backbone, or timm:NAME for any timm model (`metrix backbones` lists them). [default: efficientnet_lite0]")] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Pretrained weights.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="A timm backbone's pretrained weights from this file (safetensors or a timm checkpoint) instead of the hub.")] = None,
    embedding_size: Annotated[Optional[int], typer.Option(help="[default: 512; recipe cpu: the backbone's feature width]")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input size. [default: the backbone's]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="[default: 10]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="[default: 100]")] = None,
    samples_per_class: Annotated[Optional[int], typer.Option(help="K images per class in a batch. [default: 5]")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="balanced (P classes x K images) or random (the paper's for CUB and Cars). [default: balanced]")] = None,
    pair_choice: Annotated[Optional[str], typer.Option(help="Metrix pairs: all (positive-negative and anchor-negative every step) or coin (the official code's: one kind per step). [default: all]")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, or bf16 autocast of the backbone (CPUs with AMX / AVX512-BF16, GPUs). [default: fp32]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="[default: 1e-4]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="[default: 0]")] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="Image decoding processes. [default: 2]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory. [default: runs/<time>-<data>-<loss>-<mixup>]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A JSON or TOML file of settings (flags override it).")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="cpu (cached frozen stages), full-cpu (the whole network trains at 96 px), full (the whole backbone at its own size, the default with a GPU) or paper (ResNet-50, the paper's protocol); docs/training.md says which is the default without a GPU and why.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last checkpoint.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train a Metrix embedding model. With no data, trains on the built-in synthetic dataset."""
    from metrix.backbones import BackboneError
    from metrix.datasets import DataError
    from metrix.training.checkpoint import CheckpointError
    from metrix.training.config import ConfigError, explain_choices, read_config_file, resolve_config
    from metrix.training.trainer import train as run_training

    flags = dict(
        data=_str(data), dataset=dataset, data_root=_str(data_root), train_classes=train_classes,
        split_file=_str(split_file), val_fraction=val_fraction, labels=labels, clusters=clusters,
        recluster_every=recluster_every, loss=loss, mixup=mixup, backbone=backbone,
        pretrained=pretrained, weights=_str(weights), embedding_size=embedding_size, image_size=image_size, epochs=epochs,
        batch_size=batch_size, samples_per_class=samples_per_class, sampler=sampler, pair_choice=pair_choice,
        precision=precision, lr=lr, seed=seed, num_workers=num_workers,
        out=_str(out), recipe=recipe,
    )
    try:
        if resume is not None:
            given = [k for k, v in flags.items() if v is not None] + (["config"] if config else [])
            if given:
                raise ConfigError(f"--resume continues a run with its own settings; drop {', '.join('--' + g.replace('_', '-') for g in given)}")
            run_training(None, resume=resume, progress=progress)
        else:
            resolved = resolve_config(config, **flags)
            given = {k for k, v in flags.items() if v is not None} | set(read_config_file(config) if config else ())
            run_training(resolved, progress=progress, why=explain_choices(resolved, given))
    except (ConfigError, DataError, BackboneError, CheckpointError) as error:
        _fail(error)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by metrix train.")],
    checkpoint: Annotated[str, typer.Option(help="best (chosen on the validation classes; latest where the run has no validation split), latest, or a checkpoint folder name.")] = "best",
    data: Annotated[Optional[Path], typer.Option(help="Evaluate on this image folder's test classes instead.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Or on this benchmark's test split.")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Where that benchmark was downloaded.")] = None,
    floor: Annotated[bool, typer.Option("--floor", help="Also evaluate the untrained pretrained backbone.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Also write an HTML report here: the metrics next to the floor (implies --floor), R@1 per class, the most confused classes, the worst queries with their neighbours.")] = None,
) -> None:
    """Recall@K, MAP@R, R-precision, NMI and utilization of a trained run on unseen classes."""
    import json

    from metrix.backbones import BackboneError
    from metrix.datasets import DataError
    from metrix.evaluation_report import ReportError, check_writable, render_html, report_data, write_report
    from metrix.run_evaluation import evaluate_run, format_table
    from metrix.training.checkpoint import CheckpointError

    log = (lambda *a, **k: None) if json_output else print
    try:
        if report is not None:
            floor = True
            check_writable(report)
            content = report_data(run_dir, checkpoint, _str(data), dataset, _str(data_root), log=log)
            write_report(report, render_html(content))
            reports = [content.trained, content.floor]
        else:
            reports = [evaluate_run(run_dir, checkpoint, _str(data), dataset, _str(data_root), log=log)]
            if floor:
                reports.append(evaluate_run(run_dir, checkpoint, _str(data), dataset, _str(data_root), floor=True, log=log))
    except (DataError, CheckpointError, BackboneError, ReportError) as error:
        _fail(error)
    if json_output:
        typer.echo(json.dumps(reports[0] if not floor else {"trained": reports[0], "floor": reports[1]}, indent=2))
        return
    first = reports[0]
    typer.echo(f"{first['run']} on {first['data']}, {first['split']}: {first['num_queries']} queries, "
               f"{first['num_classes']} classes")
    for line in format_table(reports):
        typer.echo(line)
    if report is not None:
        typer.echo(f"wrote {report}")


@app.command("export")
def export_(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A run directory written by metrix train.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the model. [default: model.onnx in the checkpoint folder; with --backbone, models/NAME-floor.onnx]")] = None,
    checkpoint: Annotated[str, typer.Option(help="best (chosen on the validation classes; latest where the run has no validation split), latest, or a checkpoint folder name.")] = "best",
    quantize: Annotated[Optional[str], typer.Option(help="int8: also write MODEL.int8.onnx, with its R@1 change measured on the test split.")] = None,
    max_r1_drop: Annotated[float, typer.Option(help="Refuse an int8 model that loses more R@1 points than this.")] = 1.0,
    backbone: Annotated[Optional[str], typer.Option(help="Instead of a run: this backbone untrained (its pooled pretrained features, the floor), to search with no training.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="--backbone: input size. [default: the backbone's]")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="--backbone timm:NAME: its pretrained weights from this file.")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="--backbone: pretrained weights.")] = True,
) -> None:
    """Export a trained run (or, with --backbone, an untrained backbone) to ONNX: uint8 NHWC images in, L2-normalised embeddings out, verified against PyTorch."""
    from metrix.backbones import BackboneError
    from metrix.export.onnx_export import ExportError, export_backbone, export_run
    from metrix.export.runtime import ModelError
    from metrix.training.checkpoint import CheckpointError

    if (run_dir is None) == (backbone is None):
        _fail("give a run directory or --backbone NAME (exactly one)")
    if backbone is None and (image_size or weights or not pretrained):
        _fail("--image-size, --weights and --no-pretrained go with --backbone; a run's model keeps its own")
    try:
        if backbone is not None:
            from metrix.index.defaults import floor_model_path

            output = output or floor_model_path(backbone)
            metadata, parity = export_backbone(backbone, output, image_size, pretrained, _str(weights))
            report = {"model": str(output), "metadata": metadata, "parity": parity, "verified_on": "seeded noise images",
                      "checkpoint_choice": f"{backbone} with no training: its pooled features, L2-normalised"}
        else:
            report = export_run(run_dir, output, checkpoint, quantize, max_r1_drop)
    except (CheckpointError, ExportError, ModelError, BackboneError) as error:
        _fail(error)
    meta = report["metadata"]
    typer.echo(report["checkpoint_choice"])
    typer.echo(f"wrote {report['model']}")
    typer.echo(f"  input   images: {meta.input_layout} [batch, {meta.image_size}, {meta.image_size}, 3]; {meta.resize_policy}")
    typer.echo(f"  output  embeddings: float32 [batch, {meta.embedding_size}], L2-normalised")
    typer.echo(f"  output  cells: float32 [batch, h, w, {meta.embedding_size}], each location of the last feature map "
               "embedded alone (the heat maps of `metrix explain`)")
    typer.echo(f"  model   {meta.backbone}, loss {meta.loss}, mixup {meta.mixup}: {meta.provenance}; "
               f"weights sha256 {meta.weights_sha256[:16]}")
    typer.echo(f"  graph   {meta.exporter}, opset {meta.opset}; onnx.checker (full) passed")
    for parity in report["parity"]:
        typer.echo(f"  parity  onnxruntime vs PyTorch, {parity} ({report['verified_on']})")
    if "int8" in report:
        q = report["int8"]
        typer.echo(f"wrote {q['model']}")
        typer.echo(f"  int8    R@1 on {q['data']} {q['split']} ({q['num_queries']} queries): fp32 {q['recall_at_1_fp32']:.2f}, "
                   f"int8 {q['recall_at_1_int8']:.2f} ({q['recall_at_1_change']:+.2f})")


@app.command("build-index")
def build_index_(
    gallery: Annotated[str, typer.Argument(help="A folder of images, or an object-store URL such as s3://bucket/prefix (searched recursively; top-level sub-folders are labels).")],
    model: Annotated[Optional[Path], typer.Option(help="An exported model. [default: the newest model*.onnx of the newest run under runs/]")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Index folder. [default: indexes/<gallery folder name>]")] = None,
    index_type: Annotated[Optional[str], typer.Option(help="auto (exact up to 100,000 images, IVF above, IVF-PQ when the budget asks), flat, ivf or ivfpq. [default: auto, or the index's]")] = None,
    max_index_memory: Annotated[Optional[str], typer.Option(help="RAM the loaded index may take, e.g. 4GB; auto then picks the index that fits. [default: no limit, or the index's]")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Start over instead of updating.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 64,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (a Ray cluster; needs metrix[ray]).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="The Ray cluster to use, e.g. ray://head:10001 or auto. [default: RAY_ADDRESS, else a local Ray]")] = None,
    workers: Annotated[int, typer.Option(help="--engine ray: embedding actors.")] = 2,
    cpus_per_worker: Annotated[float, typer.Option(help="--engine ray: CPUs per actor (also its onnxruntime threads).")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(help="--engine ray: GPUs per actor (CUDA with onnxruntime-gpu).")] = 0.0,
    keep: Annotated[int, typer.Option(min=1, help="Generations kept on disk after the build: the new one and the ones before it, so that a server still answering from the previous one can finish.")] = 2,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Embed a gallery (folder or object store) into a faiss index with metadata; re-runs embed only what changed."""
    from metrix.export.runtime import ModelError
    from metrix.index.build import build_index
    from metrix.index.defaults import default_index_dir
    from metrix.index.plan import human, parse_memory
    from metrix.index.ray_engine import RayOptions
    from metrix.index.store import GalleryIndexError
    from metrix.index.vectors import TARGET_RECALL

    if engine not in ("local", "ray"):
        _fail(f"--engine {engine}: choose local or ray")
    ray = RayOptions(ray_address, workers, cpus_per_worker, gpus_per_worker, batch_size) if engine == "ray" else None
    try:
        if model is None:
            model = _default_model()
        out = out or default_index_dir(gallery)
        budget = parse_memory(max_index_memory) if max_index_memory is not None else None
        report = build_index(gallery, model, out, index_type, rebuild, batch_size, progress=progress, ray=ray,
                             max_memory=budget, keep=keep)
    except (GalleryIndexError, ModelError, ValueError) as error:
        _fail(error)
    index = report.index
    kind = index.get("type", "?") + (f", nprobe {index['nprobe']}, recall@10 {index['recall_at_10']:.3f} vs exact"
                                     if "nprobe" in index else "")
    if "rerank" in index:
        kind += f" after an exact re-rank of {index['rerank']}"
    if "estimated_bytes" in index:
        kind += f"; about {human(index['estimated_bytes'])} of RAM"
    typer.echo(f"{report.index_dir}: {report.count} images ({kind}), generation {report.generation}")
    if index.get("recall_at_10", 1.0) < TARGET_RECALL:
        typer.echo(f"  warning: recall@10 {index['recall_at_10']:.3f} is below the {TARGET_RECALL} target even with every "
                   "list probed; give a larger --max-index-memory or --index-type ivf")
    typer.echo(f"  added {report.added}, changed {report.changed}, removed {report.removed}, unchanged {report.unchanged}; "
               f"{report.embedded_per_s:.1f} images/s embedding, {report.seconds:.1f} s in all")
    if report.failed:
        typer.echo(f"  skipped {len(report.failed)} file(s) (list in {report.index_dir / 'report.json'}):")
        for path, reason in report.failed[:20]:
            typer.echo(f"    {path}: {reason}")
        if len(report.failed) > 20:
            typer.echo(f"    ... and {len(report.failed) - 20} more")


def _default_model() -> Path:
    from metrix.index.defaults import FLOOR_BACKBONE, RUNS, default_model, floor_model
    from metrix.index.store import GalleryIndexError

    try:
        model = default_model()
        typer.echo(f"no --model given: using {model}, the newest exported model of the newest run")
        return model
    except GalleryIndexError:
        model, exported = floor_model()
    typer.echo(f"no --model given and no exported run under {RUNS}/: using the untrained pretrained {FLOOR_BACKBONE} "
               f"({model}{', exported now' if exported else ''}); `metrix train` on your images, or "
               f"`--labels none` without labels, then `metrix export`, gives a model fitted to them")
    return model


@app.command()
def search(
    image: Annotated[Path, typer.Argument(help="The query image.")],
    index: Annotated[Optional[Path], typer.Option(help="Index folder. [default: the most recently built under indexes/]")] = None,
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 10,
    model: Annotated[Optional[Path], typer.Option(help="The model to embed the query with. [default: the index's]")] = None,
    box: Annotated[Optional[str], typer.Option(help="Search with this region of the image only: x0,y0,x1,y1 in pixels of the image as displayed.")] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="Only images with this label (top-level folder); repeat for several.")] = None,
    path_prefix: Annotated[Optional[str], typer.Option(help="Only images whose path (relative to the gallery) starts with this.")] = None,
    right: Annotated[Optional[list[str]], typer.Option(help="Relevance feedback: a right answer (id or gallery path); repeat for several.")] = None,
    wrong: Annotated[Optional[list[str]], typer.Option(help="Relevance feedback: a wrong answer (id or gallery path); repeat for several.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """The gallery images most similar to IMAGE (or a region of it): path, cosine score and label;
    within labels or a path prefix, and moved by feedback on earlier results."""
    import json

    from metrix.export.runtime import ModelError
    from metrix.images import ImageDecodeError, parse_box
    from metrix.index.defaults import newest_index
    from metrix.index.filters import SearchFilter
    from metrix.index.query import Refinement, resolve_ids, search_image
    from metrix.index.store import REBUILD_HINT, GalleryIndexError, open_with_model

    try:
        index = index or newest_index()
        opened, embedder = open_with_model(index, model)
        refinement = Refinement(parse_box(box) if box else None, SearchFilter(tuple(label or ()), path_prefix or ""),
                                resolve_ids(opened, right or (), "--right"), resolve_ids(opened, wrong or (), "--wrong"))
        answer = search_image(opened, embedder, image, k, refinement=refinement)
    except (GalleryIndexError, ModelError, ImageDecodeError, ValueError) as error:
        _fail(error)
    if json_output:
        typer.echo(json.dumps({"query": str(image), "index": str(index), "applied": refinement.describe(), "results": [
            {"rank": r, "path": h.path, "score": h.score, "label": h.label, "id": h.id} for r, h in enumerate(answer.hits, 1)],
            "left_out": [{"path": path, "reason": reason} for path, reason in answer.left_out]},
            indent=1, ensure_ascii=False))
        return
    if refinement.describe():
        typer.echo(f"({refinement.describe()})")
    for rank, hit in enumerate(answer.hits, 1):
        typer.echo(f"{rank:>3}  {hit.score:.4f}  {hit.path}" + (f"  [{hit.label}]" if hit.label else "") + f"  id {hit.id}")
    if answer.left_out:
        typer.echo(f"left out {len(answer.left_out)} result(s) whose file is gone or changed since indexing "
                   f"(e.g. {answer.left_out[0][0]}: {answer.left_out[0][1]}); {REBUILD_HINT}", err=True)


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="The query image.")],
    result: Annotated[str, typer.Argument(help="A gallery image of the index: its id (from `metrix search`) or its path in the gallery.")],
    index: Annotated[Optional[Path], typer.Option(help="Index folder. [default: the most recently built under indexes/]")] = None,
    box: Annotated[Optional[str], typer.Option(help="The query's region, as in `metrix search --box`.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the picture: query, its heat map, the result's heat map, the result.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the heat maps as JSON.")] = False,
) -> None:
    """Why RESULT matched IMAGE: a heat map over each picture of where it looks like the other
    (each location's embedding against the other picture's embedding)."""
    import json

    from metrix.export.explain import side_by_side
    from metrix.export.runtime import ModelError
    from metrix.images import ImageDecodeError, parse_box
    from metrix.index.defaults import newest_index
    from metrix.index.query import explain_hit, resolve_ids
    from metrix.index.store import GalleryIndexError, open_with_model

    try:
        index = index or newest_index()
        opened, embedder = open_with_model(index, None)
        (image_id,) = resolve_ids(opened, [result], "RESULT")
        hit, explanation = explain_hit(opened, embedder, image, None, parse_box(box) if box else None, image_id)
        if out is not None:
            side_by_side(explanation).save(out)
    except (GalleryIndexError, ModelError, ImageDecodeError, ValueError, LookupError, OSError) as error:
        _fail(error)
    if json_output:
        body = explanation.to_json()
        del body["query_overlay"], body["result_overlay"]
        typer.echo(json.dumps({"query": str(image), "id": hit.id, "path": hit.path, **body}, indent=1))
        return
    low, high = explanation.scale
    typer.echo(f"{hit.path} (id {hit.id}): cosine {explanation.score:.4f}; heat = each location's cosine with the other "
               f"picture, from {low:.2f} to {high:.2f}")
    for title, grid in (("query", explanation.query_map), ("result", explanation.result_map)):
        typer.echo(f"  {title}:")
        for row in grid:
            typer.echo("    " + " ".join(f"{value:5.2f}" for value in row))
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command()
def duplicates(
    index: Annotated[Optional[Path], typer.Argument(help="Index folder. [default: the most recently built under indexes/]")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Cosine similarity in (0, 1] at which two images count as near-duplicates. [default: 0.88, chosen on copies planted among cub100 photos (docs/duplicates.md)]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the groups as JSON.")] = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a page of the groups' pictures (thumbnails embedded) to this file.")] = None,
) -> None:
    """Groups of near-identical images in an index, largest first: ids, paths, labels, similarities."""
    import json

    from metrix.index.defaults import newest_index
    from metrix.index.duplicates import DEFAULT_THRESHOLD, find_duplicates
    from metrix.index.store import GalleryIndexError, open_index

    try:
        index = index or newest_index()
        opened = open_index(index)
        result = find_duplicates(opened, DEFAULT_THRESHOLD if threshold is None else threshold).to_json()
    except (GalleryIndexError, ValueError) as error:
        _fail(error)
    if html is not None:
        from metrix.app.duplicates_html import embedded_thumbnail, render_page

        page = render_page(result, lambda image: embedded_thumbnail(opened.source, image["path"]),
                           title=f"Near-duplicates in {index}")
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as error:
            _fail(f"{html}: cannot write ({error.strerror or error})")
    if json_output:
        typer.echo(json.dumps(result, indent=1, ensure_ascii=False))
        return
    typer.echo(f"{index} ({result['generation']}): {result['images']:,} images, search {result['search']}")
    typer.echo(f"{len(result['groups'])} groups of near-duplicates ({result['grouped_images']} images) at cosine "
               f"similarity >= {result['threshold']:g} ({result['seconds']:.1f} s)" + (f"; pictures in {html}" if html else ""))
    for number, group in enumerate(result["groups"], 1):
        least = "-" if group["min_similarity"] is None else f"{group['min_similarity']:.4f}"
        typer.echo(f"\ngroup {number}: {group['size']} images; least similar pair {least}, weakest link "
                   f"{group['weakest_link']:.4f}")
        for image in group["images"]:
            typer.echo(f"  {image['similarity']:.4f}  {image['path']}" + (f"  [{image['label']}]" if image["label"] else ""))


index_app = typer.Typer(help="Look after an index folder.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("verify")
def index_verify(
    index: Annotated[Path, typer.Argument(help="An index folder written by build-index.")],
) -> None:
    """Check every generation of an index: manifest and file checksums, faiss readability, SQLite's integrity check. Exit status 1 on any problem."""
    from metrix.index.store import GalleryIndexError
    from metrix.index.verify import verify_index

    try:
        result = verify_index(index)
    except GalleryIndexError as error:
        _fail(error)
    for line in result.problems:
        typer.echo(line)
    for generation, files in result.checked.items():
        typer.echo(f"ok: {generation}{' (current)' if generation == result.current else ''}: {files} files verified")
    if result.problems:
        raise typer.Exit(code=1)


@app.command()
def serve(
    index: Annotated[Optional[Path], typer.Option(help="Index folder. [default: the most recently built under indexes/]")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the app to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    model: Annotated[Optional[Path], typer.Option(help="The model to embed queries with. [default: the index's]")] = None,
    auth: Annotated[Optional[str], typer.Option(help="USER:PASSWORD for the page (and HTTP Basic on the API). [env: METRIX_AUTH]")] = None,
    auth_file: Annotated[Optional[Path], typer.Option(help="A file of USER:PASSWORD lines, one per user.")] = None,
    token: Annotated[Optional[str], typer.Option(help="Bearer token the JSON API requires. [env: METRIX_API_TOKEN]")] = None,
    cache_ttl: Annotated[int, typer.Option(help="Seconds the page's uploads stay in Gradio's cache before they are swept.")] = 600,
) -> None:
    """The search service: the web page at / and the JSON API at /api (docs at /docs). Follows the
    index's CURRENT generation, so a rebuilt gallery is served without a restart."""
    import logging
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from metrix.app.access import AccessError, is_loopback, load_access
    from metrix.export.runtime import ModelError
    from metrix.index.defaults import newest_index
    from metrix.index.live import LiveIndex
    from metrix.index.store import GalleryIndexError

    try:
        access = load_access(auth, auth_file, token)
        live = LiveIndex(index or newest_index(), model)
    except (GalleryIndexError, ModelError, AccessError) as error:
        _fail(error)
    from metrix.app.server import Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opened = live.snapshot().index
    if not is_loopback(host) and not access.enabled:
        typer.echo(f"warning: serving {opened.gallery_root} to the network ({host}) with no login or token: anyone who "
                   "can reach this port can search it and fetch its images; pass --auth and/or --token", err=True)
    typer.echo(f"serving {opened.dir} ({len(opened):,} images from {opened.gallery_root}, {opened.generation}) on "
               f"http://{host}:{port} (page /, API /api, docs /docs)" + (" with access control" if access.enabled else ""))
    Server(live, access, host, port, delete_cache=(min(60, cache_ttl), cache_ttl)).run()


@app.command()
def demo(
    data: Annotated[Optional[Path], typer.Option(help="Your image folder (one sub-folder per class). [default: the built-in synthetic dataset]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where the run, gallery and index go. [default: runs/demo-<time>]")] = None,
    serve_: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the web UI at the end.")] = True,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
) -> None:
    """Train Metrix, export it, index the unseen classes, compare with the untrained backbone, serve the UI."""
    from metrix.backbones import BackboneError
    from metrix.datasets import DataError
    from metrix.demo import run_demo
    from metrix.export.onnx_export import ExportError
    from metrix.index.store import GalleryIndexError
    from metrix.training.checkpoint import CheckpointError
    from metrix.training.config import ConfigError

    try:
        _, index_dir = run_demo(data, out)
    except (ConfigError, DataError, BackboneError, CheckpointError, ExportError, GalleryIndexError) as error:
        _fail(error)
    if serve_:
        serve(index=index_dir, host=host, port=port, model=None)


def _str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def main() -> None:
    app()
