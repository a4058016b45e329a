"""`metrix train`: Metrix training of an embedding model, with per-epoch validation on held-out
training classes, a JSONL metrics log, a curves plot and atomic per-epoch checkpoints.

Every epoch draws its randomness (sampler order, augmentation, lambda) from (seed, epoch), so a
run resumed from its last checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..backbones import create_backbone
from ..datasets.base import RetrievalData, Sample, Split, check_trainable
from ..distributed import Distributed, GlobalBatch
from ..embedding import embed_samples
from ..evaluation import RECALL_KS, evaluate_retrieval
from ..image_dataset import ImageDataset
from ..mixup import Metrix
from ..model import BFloat16Features, EmbeddingModel, freeze_batchnorm, init_head_with_pca
from ..decoded_images import DecodedImages
from ..pseudo_labels import cluster_labels
from ..sampler import BatchSampler, DistinctRepeats, build_sampler
from ..transforms import eval_transform, train_transform
from ..view_agreement import embed_views, view_agreement, view_inputs
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import IMAGES_PER_CLUSTER, ConfigError, TrainConfig
from .data import load_training_data
from .feature_cache import CachedTail, FeatureCache
from .objective import build_objective
from .report import append_metrics, plot_curves, versions


@dataclass
class TrainingRun:
    config: TrainConfig
    run_dir: Path
    data: RetrievalData
    model: EmbeddingModel
    metrix: Metrix
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: BatchSampler
    label_map: dict[int, int]
    device: torch.device
    distributed: Distributed
    trained_params: list[torch.nn.Parameter]  # of the backbone stages that train
    first_trained_stage: int
    cache: FeatureCache | None = None
    decoded: dict[str, DecodedImages] | None = None  # "train", "val", "train_eval" (decode_once)
    train_eval: list | None = None  # training samples measured each epoch (train_retrieval)
    val_views: Tensor | None = None  # without labels: two views of each held-out image (view agreement)
    pseudo_labels: list[int] | None = None  # labels=clusters: each training image's current cluster
    eta_pending: bool = True
    log: Callable = print


def train(config: TrainConfig, resume: Path | None = None, progress: bool = True, log=print,
          why: str | None = None, probe: Callable[[EmbeddingModel, int], dict] | None = None) -> Path:
    """Train (or resume) a run; returns the run directory. `why`: a line saying which recipe and
    mixing run and why, printed once the data has loaded. `probe(model, frozen_stages)`: extra
    metrics logged every epoch as probe_*, for benchmarks that follow other images than the run's
    test split (config.record_test follows that split); neither ever chooses the epoch."""
    start_epoch, best = 0, -math.inf
    if resume is not None:
        config = _config_of_run(resume)
    distributed = Distributed.from_environment(config.device)
    if not distributed.is_main:
        log, progress = (lambda *args: None), False
    run = _build(config, resume, log, distributed, why)
    _prepare(run, fresh=resume is None, progress=progress, log=log)
    if resume is not None:
        checkpoint = load_checkpoint(resume, "latest")
        state = checkpoint.trainer_state()
        _load_model_state(run, checkpoint.model_state)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state.get("best", -math.inf)
        if state.get("pseudo_labels") is not None:
            _set_labels(run, state["pseudo_labels"])
        log(f"resuming {run.run_dir} after epoch {state['epoch'] + 1} of {config.epochs}")
    if distributed.is_main:
        append_metrics(run.run_dir, None, keep_epochs_below=start_epoch)

    for epoch in range(start_epoch, config.epochs):
        if config.labels == "clusters" and epoch % config.recluster_every == 0:
            _recluster(run, epoch)
        stats = _train_epoch(run, epoch, progress)
        if distributed.is_main:
            val = _validate(run, run.data.val.samples, "val") if len(run.data.val) else {}
            if run.train_eval:
                val.update({f"train_{k}": v for k, v in _validate(run, run.train_eval, "train_eval").items()})
            score = val.get("view_agreement", val.get("map_at_r", -stats["loss"]))
            is_best = score > best
            best = max(best, score)
            record = {"epoch": epoch + 1, **stats,
                      **{k if k.startswith("train_") else f"val_{k}": v for k, v in val.items()}}
            if config.record_test and len(run.data.test):  # reported only: `best` follows validation
                record.update({f"test_{k}": v for k, v in _test_metrics(run).items()})
            if probe is not None:
                record.update({f"probe_{k}": v for k, v in probe(run.model, run.first_trained_stage).items()})
            append_metrics(run.run_dir, record)
            plot_curves(run.run_dir)
            _save(run, epoch, record, best, is_best)
            log(_describe_epoch(record, config.epochs))
        distributed.barrier()
    log(f"run saved in {run.run_dir}")
    distributed.close()
    return run.run_dir


def _build(config: TrainConfig, resume: Path | None, log, distributed: Distributed, why: str | None) -> TrainingRun:
    if distributed.world_size > 1 and config.mixup == "input":
        raise ConfigError("input mixing is not supported with several processes yet; use --mixup feature or embed")
    torch.manual_seed(config.seed)
    data = load_training_data(config, log)
    if data.labelled:
        check_trainable(data.train, "the training split")
    device = distributed.device
    backbone = create_backbone(config.backbone, config.pretrained, config.image_size, config.weights)
    if config.embedding_size is None:
        config.embedding_size = backbone.num_features
    model = EmbeddingModel(backbone, config.embedding_size)
    train_classes = data.train.classes
    label_map = {c: i for i, c in enumerate(train_classes)}
    metrix = build_objective(config, len(train_classes))
    loss = metrix.loss
    model.to(device)
    metrix.to(device)
    if config.channels_last and device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    if config.freeze_bn:
        freeze_batchnorm(model)
    stages = model.backbone.stages()
    if config.train_stages is not None and len(stages) == 1:
        raise ConfigError(f"{config.backbone} runs as one stage (its forward is not a sequence of modules), so "
                          f"train-stages cannot freeze part of it; use --recipe full-cpu or full")
    first_trained = config.frozen_stages(len(stages))
    for stage in stages[:first_trained]:
        stage.requires_grad_(False)
    trained = [p for stage in stages[first_trained:] for p in stage.parameters()] + model.backbone.pooling_parameters()
    trained_params = [p for p in trained if p.requires_grad]
    optimizer_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[config.optimizer]
    optimizer = optimizer_class(
        [
            {"params": trained_params, "lr": config.lr, "name": "backbone"},
            {"params": list(model.embedding_head.parameters()), "lr": config.lr, "name": "head"},
            *loss.parameter_groups(config.lr),
        ],
        lr=config.lr, weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    sampler = _sampler(config, data.train.labels, distributed, unlabelled=not data.labelled)
    if why and distributed.is_main:
        log(why)
    run_dir = Path(distributed.broadcast(str(resume or _new_run_dir(config, data))))
    if distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None and distributed.is_main:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        log(f"training on {data.describe()}")
        log(f"recipe {config.recipe}, {config.backbone} at {model.preprocessing.image_size} px -> "
            f"{config.embedding_size}-d, loss {config.loss}, Metrix {config.mixup}"
            + (f", no labels: {_describe_labels(config, len(data.train))}" if config.unlabelled else "")
            + (f" ({config.pair_choice} pairs)" if config.mixup != "none" else "")
            + f", {config.epochs} epochs, {config.sampler} batches of {config.batch_size} ({len(sampler)}/epoch), "
            f"{config.precision}, device {device}"
            + (f", {distributed.world_size} processes" if distributed.world_size > 1 else ""))
    return TrainingRun(config, run_dir, data, model, metrix, optimizer, scheduler, sampler, label_map, device,
                       distributed, trained_params, first_trained, log=log)


def _prepare(run: TrainingRun, fresh: bool, progress: bool, log) -> None:
    """Cache the frozen stages' outputs and initialise the head, as the config asks."""
    config = run.config
    if config.cached_views:
        start = time.perf_counter()
        total = config.cached_views * len(run.data.train)
        with _progress_bar(progress, f"caching {config.cached_views} views", total, unit="images") as advance:
            run.cache = FeatureCache.build(
                run.model, run.data.train.samples, run.label_map, run.first_trained_stage, config.cached_views,
                config.seed, num_workers=config.num_workers, progress=advance,
                channels_last=_channels_last(run),
            )
        log(f"cached {config.cached_views} views of {len(run.data.train)} images "
            f"({run.cache.features.numel() * 2 / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    if config.decode_once and not config.cached_views:
        run.decoded = _decode_once(run, progress, log)
    if not run.data.labelled and len(run.data.val):
        run.val_views = view_inputs(run.model, run.first_trained_stage, run.data.val.samples,
                                    num_workers=config.num_workers, channels_last=_channels_last(run))
    if config.train_retrieval and len(run.data.val) and run.data.labelled:
        chosen = _train_eval_indices(run.data.train.samples, len(run.data.val.classes), config.seed)
        run.train_eval = [run.data.train.samples[i] for i in chosen]
        if run.decoded is not None:
            run.decoded["train_eval"] = run.decoded["train"].subset(chosen)
    if fresh and config.head_init == "pca":
        init_head_with_pca(run.model.embedding_head, _pooled_training_features(run))
        log("head initialised with the principal directions of the pooled pretrained features")


#: More decoded pixels than this are not kept in memory; the images are decoded every epoch instead.
DECODE_ONCE_MAX_BYTES = 8 * 2**30


def _decode_once(run: TrainingRun, progress: bool, log) -> dict[str, DecodedImages] | None:
    pre = run.model.preprocessing
    splits = {"train": run.data.train.samples, "val": run.data.val.samples}
    if run.config.record_test:
        splits["test"] = run.data.test.samples
        if run.data.gallery is not None:
            splits["gallery"] = run.data.gallery.samples
    count = sum(map(len, splits.values()))
    estimate = count * pre.resize_size**2 * 3 * 4 // 3  # photos are rarely squarer than 4:3
    if estimate > DECODE_ONCE_MAX_BYTES:
        log(f"not keeping {count:,} decoded images in memory (about {estimate / 2**30:.0f} GB); decoding every epoch")
        return None
    start = time.perf_counter()
    with _progress_bar(progress, "decoding images once", count, unit="images") as advance:
        decoded = {name: DecodedImages.decode(samples, pre.resize_size, pre.interpolation,
                                              threads=max(1, run.config.num_workers), progress=advance)
                   for name, samples in splits.items()}
    size = sum(d.nbytes for d in decoded.values())
    log(f"decoded {count:,} images once ({size / 1e6:.0f} MB at short side {pre.resize_size} px) "
        f"in {time.perf_counter() - start:.0f} s")
    return decoded


def _train_eval_indices(samples: list, num_classes: int, seed: int) -> list[int]:
    """Indices of the images of `num_classes` training classes (seeded): retrieval among as many
    training classes as the validation split has, next to the validation classes' retrieval,
    shows how far a model over-fits its training classes."""
    by_class: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        by_class.setdefault(sample.label, []).append(index)
    classes = sorted(by_class)
    random.Random(seed).shuffle(classes)
    return [index for label in classes[:num_classes] for index in by_class[label]]


@torch.no_grad()
def _pooled_training_features(run: TrainingRun) -> torch.Tensor:
    was_training = run.model.training
    run.model.eval()
    if run.cache is not None:
        tail = CachedTail(run.model, run.first_trained_stage)
        maps = (tail.features(run.cache.features[i : i + 64, 0].float().to(run.device))
                for i in range(0, len(run.cache.labels), 64))
    else:
        maps = (run.model.features(images.to(run.device)) for images, _ in DataLoader(
            ImageDataset(run.data.train.samples, eval_transform(run.model.preprocessing)), batch_size=64))
    pooled = torch.cat([run.model.backbone.pool(m) for m in maps])
    run.model.train(was_training)
    return pooled


def _channels_last(run: TrainingRun) -> bool:
    return run.config.channels_last and run.device.type == "cpu"


def _sampler(config: TrainConfig, labels: list[int], distributed: Distributed, unlabelled: bool) -> BatchSampler:
    sampler = build_sampler(config.sampler, labels, config.batch_size, config.samples_per_class,
                            seed=config.seed, rank=distributed.rank, world_size=distributed.world_size)
    return DistinctRepeats(sampler, len(labels)) if unlabelled else sampler


def _describe_labels(config: TrainConfig, num_images: int) -> str:
    if config.labels == "instances":
        return f"each image its own class, {config.samples_per_class} augmented views of it per batch"
    return (f"{config.clusters or _default_clusters(num_images)} k-means clusters of the embeddings, "
            f"redrawn every {config.recluster_every} epoch(s)")


def _default_clusters(num_images: int) -> int:
    return max(2, num_images // IMAGES_PER_CLUSTER)


def _recluster(run: TrainingRun, epoch: int) -> None:
    """labels=clusters: the training images' pseudo-labels from the current model."""
    config = run.config
    images = [Sample(s.path, i) for i, s in enumerate(run.data.train.samples)]  # stable: the stage cache's key
    embeddings, _ = embed_samples(run.model, images, batch_size=64, num_workers=config.num_workers,
                                  device=str(run.device), channels_last=_channels_last(run),
                                  frozen_stages=run.first_trained_stage)
    k = min(config.clusters or _default_clusters(len(embeddings)), len(embeddings))
    labels = cluster_labels(embeddings, k, seed=config.seed * 1_000 + epoch)
    _set_labels(run, labels.tolist())
    sizes = np.bincount(labels)
    run.log(f"epoch {epoch + 1}: {len(sizes)} clusters of the current embeddings "
            f"(median {int(np.median(sizes))} images, largest {sizes.max()})")


def _set_labels(run: TrainingRun, labels: list[int]) -> None:
    run.pseudo_labels = list(labels)
    run.data.train = Split([Sample(s.path, label) for s, label in zip(run.data.train.samples, labels)])
    run.label_map = {label: label for label in set(labels)}
    if run.cache is not None:
        run.cache.labels = torch.tensor(labels)
    run.sampler = _sampler(run.config, labels, run.distributed, unlabelled=True)


def _lr_factor(config: TrainConfig):
    if config.lr_schedule == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    if config.lr_schedule == "step":
        return lambda epoch: config.lr_gamma ** (epoch // config.lr_step_epochs)
    return lambda epoch: 1.0


def _seed_epoch(seed: int, epoch: int) -> int:
    value = (seed * 1_000_003 + epoch * 7919) % (2**31)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)
    return value


def _train_epoch(run: TrainingRun, epoch: int, progress: bool) -> dict:
    config, model = run.config, run.model
    epoch_seed = _seed_epoch(config.seed, epoch)
    run.metrix.reseed(epoch_seed)
    run.sampler.set_epoch(epoch)
    warm_up = epoch < config.warmup_epochs
    model.train()
    for p in run.trained_params:
        p.requires_grad_(not warm_up)
    stages = model.backbone.stages()
    for stage in stages if warm_up else stages[: run.first_trained_stage]:
        stage.eval()  # frozen stages keep their BatchNorm statistics too
    if config.freeze_bn:
        freeze_batchnorm(model)

    if run.cache is not None:
        split_model = CachedTail(model, run.first_trained_stage)
        loader = (run.cache.batch(indices, epoch_seed) for indices in run.sampler)
    else:
        split_model = model
        decoded = run.decoded["train"] if run.decoded else None
        dataset = ImageDataset(run.data.train.samples, train_transform(model.preprocessing), run.label_map,
                               seed=epoch_seed, images=decoded)
        loader = DataLoader(  # cropping decoded pixels is cheap next to a training step: no workers
            dataset, batch_sampler=run.sampler, num_workers=0 if decoded else config.num_workers,
            generator=torch.Generator().manual_seed(epoch_seed), persistent_workers=False,
        )
    if config.precision == "bf16":
        split_model = BFloat16Features(split_model)
    if run.distributed.world_size > 1:
        split_model = GlobalBatch(split_model, run.distributed)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    totals = {"loss": 0.0, "clean": 0.0, "mixed": 0.0}
    images_seen, steps, start = 0, 0, time.perf_counter()
    with _progress_bar(progress, f"epoch {epoch + 1}/{config.epochs}" + (" (head warm-up)" if warm_up else ""),
                       len(run.sampler)) as advance:
        for images, labels in loader:
            images, labels = images.to(run.device), labels.to(run.device)
            if _channels_last(run) and images.ndim == 4:  # not cached ViT tokens
                images = images.contiguous(memory_format=torch.channels_last)
            labels = run.distributed.gather_labels(labels)
            out = run.metrix(split_model, images, labels)
            run.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            run.distributed.average_gradients(params)
            if config.grad_clip_mode == "value":
                torch.nn.utils.clip_grad_value_(params, config.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            run.optimizer.step()
            steps += 1
            images_seen += len(labels)
            for key in totals:
                totals[key] += float(getattr(out, key).detach())
            advance(totals["loss"] / steps, images_seen / (time.perf_counter() - start))
            if steps == ETA_AFTER_STEPS and run.eta_pending and not warm_up:
                run.eta_pending = False
                _log_eta(run, epoch, (time.perf_counter() - start) / steps)
    run.scheduler.step()
    seconds = time.perf_counter() - start
    return {
        **{k: v / max(steps, 1) for k, v in totals.items()},
        "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": images_seen / seconds, "seconds": seconds,
    }


#: Steps of the first fully training epoch after which `metrix train` estimates its time.
ETA_AFTER_STEPS = 3


def _log_eta(run: TrainingRun, epoch: int, seconds_per_step: float) -> None:
    config = run.config
    steps_left = len(run.sampler) * (config.epochs - epoch) - ETA_AFTER_STEPS
    evaluated = len(run.data.val) + len(run.train_eval or []) + (len(run.data.test) if config.record_test else 0)
    eval_seconds = evaluated * seconds_per_step / config.batch_size / 3  # an eval pass: about 1/3 of a step
    minutes = (steps_left * seconds_per_step + eval_seconds * (config.epochs - epoch)) / 60
    run.log(f"estimated {minutes:.0f} min to go ({seconds_per_step:.2f} s per step in the first batches)")


def _validate(run: TrainingRun, samples: list, split: str) -> dict:
    if run.val_views is not None and split == "val":
        embeddings = embed_views(run.model, run.val_views, run.first_trained_stage, channels_last=_channels_last(run))
        return {"view_agreement": view_agreement(embeddings)}
    report = evaluate_retrieval(*_embed(run, samples, split), ks=(1, 2, 4, 8), nmi=False)
    return {"recall_at_1": report.recall_at[1], "map_at_r": report.map_at_r, "r_precision": report.r_precision}


def _test_metrics(run: TrainingRun) -> dict:
    """The test classes, measured as `metrix evaluate` measures them (each query against the
    gallery or against every other test image), for the best-epoch-on-test protocol's report."""
    query, query_labels = _embed(run, run.data.test.samples, "test")
    gallery, gallery_labels = _embed(run, run.data.gallery.samples, "gallery") if run.data.gallery else (None, None)
    reference_size = len(gallery_labels) if gallery is not None else len(query_labels) - 1
    ks = tuple(k for k in RECALL_KS.get(run.data.name, (1, 2, 4, 8)) if k <= reference_size)
    report = evaluate_retrieval(query, query_labels, gallery, gallery_labels, ks=ks, nmi=False)
    return {**{f"recall_at_{k}": v for k, v in report.recall_at.items()},
            "map_at_r": report.map_at_r, "r_precision": report.r_precision}


def _embed(run: TrainingRun, samples: list, split: str) -> tuple[np.ndarray, np.ndarray]:
    decoded = run.decoded.get(split) if run.decoded else None
    return embed_samples(
        run.model, samples, batch_size=64, num_workers=0 if decoded else run.config.num_workers,
        device=str(run.device), channels_last=_channels_last(run),
        frozen_stages=run.first_trained_stage, images=decoded,
    )


def _save(run: TrainingRun, epoch: int, record: dict, best: float, is_best: bool) -> None:
    model_state = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    model_state.update({f"loss.{k}": v for k, v in run.metrix.loss.state_dict().items()})
    trainer_state = {
        "epoch": epoch, "best": best, "pseudo_labels": run.pseudo_labels,
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
    }
    save_checkpoint(run.run_dir, epoch + 1, model_state, describe_run(run, epoch, record), trainer_state, is_best)


def describe_run(run: TrainingRun, epoch: int, record: dict) -> dict:
    """config.json of a checkpoint: everything needed to rebuild and to describe the model."""
    data = run.data
    return {
        "format": "metrix-checkpoint/1",
        "epoch": epoch + 1,
        "model": {
            "backbone": run.config.backbone,
            "embedding_size": run.config.embedding_size,
            "preprocessing": run.model.preprocessing.to_dict(),
        },
        "loss": run.config.loss,
        "mixup": run.config.mixup,
        "labels": run.config.labels,
        "data": {
            "name": data.name, "root": str(data.root),
            "train_classes": [data.class_names[c] for c in data.train.classes] if data.labelled else [],
            "val_classes": [data.class_names[c] for c in data.val.classes] if data.labelled else [],
            "num_train_images": len(data.train), "num_val_images": len(data.val),
        },
        "seed": run.config.seed,
        "metrics": record,
        "train_config": run.config.to_dict(),
        "versions": versions(),
    }


def _load_model_state(run: TrainingRun, state: dict) -> None:
    model_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    loss_state = {k.removeprefix("loss."): v for k, v in state.items() if k.startswith("loss.")}
    run.model.load_state_dict(model_state)
    run.metrix.loss.load_state_dict(loss_state)


def _config_of_run(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json)")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def _new_run_dir(config: TrainConfig, data: RetrievalData) -> Path:
    if config.out:
        return Path(config.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{data.name}-{config.loss}-{config.mixup}"


def _describe_epoch(record: dict, epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f} (clean {record['clean']:.4f}, "
            f"mixed {record['mixed']:.4f}), {record['images_per_s']:.1f} img/s, {record['seconds']:.0f} s")
    if "val_map_at_r" in record:
        text += f"; val R@1 {record['val_recall_at_1']:.1f}, MAP@R {record['val_map_at_r']:.1f}"
    if "test_map_at_r" in record:
        text += f" [test R@1 {record['test_recall_at_1']:.1f}, MAP@R {record['test_map_at_r']:.1f}: reported, never chosen on]"
    if "train_map_at_r" in record:
        text += f" (training classes: R@1 {record['train_recall_at_1']:.1f}, MAP@R {record['train_map_at_r']:.1f})"
    return text


class _progress_bar:
    """A rich progress bar with the running loss and images/s (a no-op when disabled); with
    unit="images" it counts images instead, advanced by n."""

    def __init__(self, enabled: bool, description: str, total: int, unit: str = "batches"):
        self.enabled, self.description, self.total, self.unit = enabled, description, total, unit

    def __enter__(self):
        if not self.enabled:
            return lambda *args: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
            TimeRemainingColumn(), transient=True,
        )
        self.progress.start()
        task = self.progress.add_task(self.description, total=self.total, loss=float("nan"), ips=0.0)
        if self.unit == "images":
            return lambda n: self.progress.update(task, advance=n)
        return lambda loss, ips: self.progress.update(task, advance=1, loss=loss, ips=ips)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()
        return False
