"""A training run put together from its config: data, model, Metrix objective, optimiser,
sampler and run folder (build_run), then the caches and head initialisation the config asks for
(prepare_run)."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..backbones import create_backbone
from ..datasets.base import RetrievalData, check_trainable
from ..mixup import Metrix
from ..model import EmbeddingModel, freeze_batchnorm, init_head_with_pca
from ..progress import ProgressBar
from ..transforms import eval_transform
from .config import IMAGES_PER_CLUSTER, ConfigError, TrainConfig
from .data import load_training_data
from .decoded_images import DecodedImages
from .distributed import Distributed
from .flip_check import choose_flip, save_check
from .image_dataset import ImageDataset
from .objective import build_objective, make_optimizer
from .sampler import BatchSampler, DistinctRepeats, build_sampler
from .stage_cache import CachedTail, FeatureCache
from .view_agreement import view_inputs


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


def build_run(config: TrainConfig, resume: Path | None, log, distributed: Distributed, why: str | None) -> TrainingRun:
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
    model.to(device)
    metrix.to(device)
    if config.channels_last and device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    if config.freeze_bn:
        freeze_batchnorm(model)
    stages = model.backbone.stages()
    if config.train_stages is not None and len(stages) == 1:
        raise ConfigError(
            f"{config.backbone} runs as one stage (its forward is not a sequence of modules), so "
            f"train-stages cannot freeze part of it; use --recipe full-cpu or full"
        )
    first_trained = config.frozen_stages(len(stages))
    for stage in stages[:first_trained]:
        stage.requires_grad_(False)
    trained = [p for stage in stages[first_trained:] for p in stage.parameters()] + model.backbone.pooling_parameters()
    trained_params = [p for p in trained if p.requires_grad]
    optimizer = make_optimizer(
        config,
        [
            {"params": trained_params, "lr": config.lr, "name": "backbone"},
            {"params": list(model.embedding_head.parameters()), "lr": config.lr, "name": "head"},
            *metrix.loss.parameter_groups(config.lr),
        ],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    fitted = fit_batch(config, data.train.labels, distributed.world_size)
    sampler = make_sampler(config, data.train.labels, distributed, unlabelled=not data.labelled)
    for line in (why, fitted) if distributed.is_main else ():
        if line:
            log(line)
    flip_check = _choose_flip(config, data, model, distributed, resume, log)
    run_dir = Path(distributed.broadcast(str(resume or new_run_dir(config, data))))
    if distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None and distributed.is_main:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        save_check(run_dir, flip_check)
        log(f"training on {data.describe()}")
        log(
            f"recipe {config.recipe}, {config.backbone} at {model.preprocessing.image_size} px -> "
            f"{config.embedding_size}-d, loss {config.loss}, Metrix {config.mixup}"
            + (f", no labels: {describe_labels(config, len(data.train))}" if config.unlabelled else "")
            + (f" ({config.pair_choice} pairs)" if config.mixup != "none" else "")
            + f", flips {'on' if config.flip else 'off'}"
            + f", {config.epochs} epochs, {config.sampler} batches of {config.batch_size} ({len(sampler)}/epoch), "
            f"{config.precision}, device {device}"
            + (f", {distributed.world_size} processes" if distributed.world_size > 1 else "")
        )
    return TrainingRun(
        config,
        run_dir,
        data,
        model,
        metrix,
        optimizer,
        scheduler,
        sampler,
        label_map,
        device,
        distributed,
        trained_params,
        first_trained,
        log=log,
    )


def _choose_flip(config: TrainConfig, data: RetrievalData, model, distributed: Distributed, resume, log):
    """Settle config.flip before anything uses it (a resumed run without it predates the setting: flips on)."""
    if config.flip is not None:
        return None
    if resume is not None:
        config.flip = True
        return None
    flip, why, check = None, None, None
    if distributed.is_main:
        flip, why, check = choose_flip(model, data, distributed.device, config.seed)
        log(why)
    config.flip = distributed.broadcast(flip)
    return check


def prepare_run(run: TrainingRun, fresh: bool, progress: bool, log) -> None:
    """Cache the frozen stages' outputs and initialise the head, as the config asks."""
    config = run.config
    if config.cached_views:
        start = time.perf_counter()
        total = config.cached_views * len(run.data.train)
        with ProgressBar(progress, f"caching {config.cached_views} views", total) as advance:
            run.cache = FeatureCache.build(
                run.model,
                run.data.train.samples,
                run.label_map,
                run.first_trained_stage,
                config.cached_views,
                config.seed,
                num_workers=config.num_workers,
                progress=advance,
                channels_last=channels_last(run),
                flip=config.flip,
            )
        log(
            f"cached {config.cached_views} views of {len(run.data.train)} images "
            f"({run.cache.features.numel() * 2 / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s"
        )
    if config.decode_once and not config.cached_views:
        run.decoded = _decode_once(run, progress, log)
    if not run.data.labelled and len(run.data.val):
        run.val_views = view_inputs(
            run.model,
            run.first_trained_stage,
            run.data.val.samples,
            num_workers=config.num_workers,
            channels_last=channels_last(run),
            flip=config.flip,
        )
    if config.train_retrieval and len(run.data.val) and run.data.labelled:
        chosen = train_eval_indices(run.data.train.samples, len(run.data.val.classes), config.seed)
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
    with ProgressBar(progress, "decoding images once", count) as advance:
        decoded = {
            name: DecodedImages.decode(
                samples, pre.resize_size, pre.interpolation, threads=max(1, run.config.num_workers), progress=advance
            )
            for name, samples in splits.items()
        }
    size = sum(d.nbytes for d in decoded.values())
    log(
        f"decoded {count:,} images once ({size / 1e6:.0f} MB at short side {pre.resize_size} px) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return decoded


def train_eval_indices(samples: list, num_classes: int, seed: int) -> list[int]:
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
        maps = (
            tail.features(run.cache.features[i : i + 64, 0].float().to(run.device))
            for i in range(0, len(run.cache.labels), 64)
        )
    else:
        maps = (
            run.model.features(images.to(run.device))
            for images, _ in DataLoader(
                ImageDataset(run.data.train.samples, eval_transform(run.model.preprocessing)), batch_size=64
            )
        )
    pooled = torch.cat([run.model.backbone.pool(m) for m in maps])
    run.model.train(was_training)
    return pooled


def channels_last(run: TrainingRun) -> bool:
    return run.config.channels_last and run.device.type == "cpu"


def make_sampler(config: TrainConfig, labels: list[int], distributed: Distributed, unlabelled: bool) -> BatchSampler:
    sampler = build_sampler(
        config.sampler,
        labels,
        config.batch_size,
        config.samples_per_class,
        seed=config.seed,
        rank=distributed.rank,
        world_size=distributed.world_size,
    )
    return DistinctRepeats(sampler, len(labels)) if unlabelled else sampler


def describe_labels(config: TrainConfig, num_images: int) -> str:
    if config.labels == "instances":
        return f"each image its own class, {config.samples_per_class} augmented views of it per batch"
    return (
        f"{config.clusters or default_clusters(num_images, config)} k-means clusters of the embeddings, "
        f"redrawn every {config.recluster_every} epoch(s)"
    )


def default_clusters(num_images: int, config: TrainConfig) -> int:
    """One cluster per IMAGES_PER_CLUSTER images, but at least as many as a balanced batch holds
    classes, while the clusters still average K images."""
    classes_per_batch = config.batch_size // config.samples_per_class
    enough = min(classes_per_batch, num_images // config.samples_per_class)
    return max(2, num_images // IMAGES_PER_CLUSTER, enough)


def fit_batch(config: TrainConfig, labels: list[int], world_size: int = 1) -> str | None:
    """Shrink the batch to what the training split can fill, since a first try is usually a small
    folder: balanced batches of P classes x K images take at most every class, random batches at
    most every image. Returns what was chosen and why (the run prints it), or None."""
    before, k = config.batch_size, config.samples_per_class
    if config.sampler == "balanced":
        classes = len(set(labels))
        if classes * k >= before or classes < 2:
            return None
        config.batch_size = classes * k
        why = f"the training split has {classes} classes, fewer than the {before // k} a batch of {before} needs"
    else:
        if len(labels) >= before or len(labels) < 2:
            return None
        config.batch_size = len(labels)
        why = f"the training split has {len(labels)} images"
    while config.batch_size % world_size or (config.sampler == "balanced" and config.batch_size % k):
        config.batch_size -= 1
    shape = f" ({config.batch_size // k} classes x {k} images)" if config.sampler == "balanced" else ""
    return f"batches of {config.batch_size}{shape} instead of {before}: {why}"


def lr_factor(config: TrainConfig):
    if config.lr_schedule == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    if config.lr_schedule == "step":
        return lambda epoch: config.lr_gamma ** (epoch // config.lr_step_epochs)
    return lambda epoch: 1.0


def new_run_dir(config: TrainConfig, data: RetrievalData) -> Path:
    if config.out:
        return Path(config.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{data.name}-{config.loss}-{config.mixup}"
