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
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..datasets.base import Sample, Split
from ..model import BFloat16Features, EmbeddingModel, freeze_batchnorm
from ..progress import ProgressBar
from ..transforms import train_transform
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import Distributed, GlobalBatch
from .embedding import embed_samples
from .image_dataset import ImageDataset
from .objective import clip_gradients
from .pseudo_labels import cluster_labels
from .report import append_metrics, plot_curves, versions
from .setup import (
    TrainingRun,
    build_run,
    channels_last,
    default_clusters,
    fit_batch,
    make_sampler,
    prepare_run,
)
from .stage_cache import CachedTail
from .tensorboard_log import TensorBoardLog
from .validation import test_class_metrics, validate


def train(
    config: TrainConfig,
    resume: Path | None = None,
    progress: bool = True,
    log=print,
    why: str | None = None,
    probe: Callable[[EmbeddingModel, int], dict] | None = None,
) -> Path:
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
    run = build_run(config, resume, log, distributed, why)
    prepare_run(run, fresh=resume is None, progress=progress, log=log)
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
    board = None
    if distributed.is_main:
        append_metrics(run.run_dir, None, keep_epochs_below=start_epoch)
        board = TensorBoardLog(run.run_dir, start_epoch) if config.log == "tensorboard" else None

    for epoch in range(start_epoch, config.epochs):
        if config.labels == "clusters" and epoch % config.recluster_every == 0:
            _recluster(run, epoch)
        stats = _train_epoch(run, epoch, progress)
        if distributed.is_main:
            val = validate(run, run.data.val.samples, "val") if len(run.data.val) else {}
            if run.train_eval:
                val.update({f"train_{k}": v for k, v in validate(run, run.train_eval, "train_eval").items()})
            score = val.get("view_agreement", val.get("map_at_r", -stats["loss"]))
            is_best = score > best
            best = max(best, score)
            record = {
                "epoch": epoch + 1,
                **stats,
                **{k if k.startswith("train_") else f"val_{k}": v for k, v in val.items()},
            }
            if config.record_test and len(run.data.test):  # reported only: `best` follows validation
                record.update({f"test_{k}": v for k, v in test_class_metrics(run).items()})
            if probe is not None:
                record.update({f"probe_{k}": v for k, v in probe(run.model, run.first_trained_stage).items()})
            append_metrics(run.run_dir, record)
            if board is not None:
                board.write(record)
            plot_curves(run.run_dir)
            _save(run, epoch, record, best, is_best)
            log(_describe_epoch(record, config.epochs))
        distributed.barrier()
    if board is not None:
        board.close()
    log(f"run saved in {run.run_dir}")
    distributed.close()
    return run.run_dir


def _recluster(run: TrainingRun, epoch: int) -> None:
    """labels=clusters: the training images' pseudo-labels from the current model."""
    config = run.config
    images = [Sample(s.path, i) for i, s in enumerate(run.data.train.samples)]  # stable: the stage cache's key
    embeddings, _ = embed_samples(
        run.model,
        images,
        batch_size=64,
        num_workers=config.num_workers,
        device=str(run.device),
        channels_last=channels_last(run),
        frozen_stages=run.first_trained_stage,
    )
    k = min(config.clusters or default_clusters(len(embeddings), config), len(embeddings))
    labels = cluster_labels(embeddings, k, seed=config.seed * 1_000 + epoch)
    _set_labels(run, labels.tolist())
    sizes = np.bincount(labels)
    run.log(
        f"epoch {epoch + 1}: {len(sizes)} clusters of the current embeddings "
        f"(median {int(np.median(sizes))} images, largest {sizes.max()})"
    )


def _set_labels(run: TrainingRun, labels: list[int]) -> None:
    run.pseudo_labels = list(labels)
    run.data.train = Split([Sample(s.path, label) for s, label in zip(run.data.train.samples, labels)])
    run.label_map = {label: label for label in set(labels)}
    if run.cache is not None:
        run.cache.labels = torch.tensor(labels)
    fitted = fit_batch(run.config, labels, run.distributed.world_size)
    if fitted:
        run.log(fitted)
    run.sampler = make_sampler(run.config, labels, run.distributed, unlabelled=True)


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
        dataset = ImageDataset(
            run.data.train.samples,
            train_transform(model.preprocessing, config.flip),
            run.label_map,
            seed=epoch_seed,
            images=decoded,
        )
        loader = DataLoader(  # cropping decoded pixels is cheap next to a training step: no workers
            dataset,
            batch_sampler=run.sampler,
            num_workers=0 if decoded else config.num_workers,
            generator=torch.Generator().manual_seed(epoch_seed),
            persistent_workers=False,
        )
    if config.precision == "bf16":
        split_model = BFloat16Features(split_model)
    if run.distributed.world_size > 1:
        split_model = GlobalBatch(split_model, run.distributed)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    totals = {"loss": 0.0, "clean": 0.0, "mixed": 0.0}
    images_seen, steps, start = 0, 0, time.perf_counter()
    description = f"epoch {epoch + 1}/{config.epochs}" + (" (head warm-up)" if warm_up else "")
    with ProgressBar(progress, description, len(run.sampler), unit=None, values=EPOCH_VALUES) as advance:
        for images, labels in loader:
            images, labels = images.to(run.device), labels.to(run.device)
            if channels_last(run) and images.ndim == 4:  # not cached ViT tokens
                images = images.contiguous(memory_format=torch.channels_last)
            labels = run.distributed.gather_labels(labels)
            out = run.metrix(split_model, images, labels)
            run.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            run.distributed.average_gradients(params)
            clip_gradients(params, config)
            run.optimizer.step()
            steps += 1
            images_seen += len(labels)
            for key in totals:
                totals[key] += float(getattr(out, key).detach())
            advance(loss=totals["loss"] / steps, speed=images_seen / (time.perf_counter() - start))
            if steps == ETA_AFTER_STEPS and run.eta_pending and not warm_up:
                run.eta_pending = False
                _log_eta(run, epoch, (time.perf_counter() - start) / steps)
    run.scheduler.step()
    seconds = time.perf_counter() - start
    return {
        **{k: v / max(steps, 1) for k, v in totals.items()},
        "lr": run.optimizer.param_groups[0]["lr"],
        "images_per_s": images_seen / seconds,
        "seconds": seconds,
    }


#: What an epoch's progress bar shows beside the batches done.
EPOCH_VALUES = {"loss": "loss {:.4f}", "speed": "{:.1f} img/s"}

#: Steps of the first fully training epoch after which `metrix train` estimates its time.
ETA_AFTER_STEPS = 3


def _log_eta(run: TrainingRun, epoch: int, seconds_per_step: float) -> None:
    config = run.config
    steps_left = len(run.sampler) * (config.epochs - epoch) - ETA_AFTER_STEPS
    evaluated = len(run.data.val) + len(run.train_eval or []) + (len(run.data.test) if config.record_test else 0)
    eval_seconds = evaluated * seconds_per_step / config.batch_size / 3  # an eval pass: about 1/3 of a step
    minutes = (steps_left * seconds_per_step + eval_seconds * (config.epochs - epoch)) / 60
    run.log(f"estimated {minutes:.0f} min to go ({seconds_per_step:.2f} s per step in the first batches)")


def _save(run: TrainingRun, epoch: int, record: dict, best: float, is_best: bool) -> None:
    model_state = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    model_state.update({f"loss.{k}": v for k, v in run.metrix.loss.state_dict().items()})
    trainer_state = {
        "epoch": epoch,
        "best": best,
        "pseudo_labels": run.pseudo_labels,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
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
            "name": data.name,
            "root": str(data.root),
            "train_classes": [data.class_names[c] for c in data.train.classes] if data.labelled else [],
            "val_classes": [data.class_names[c] for c in data.val.classes] if data.labelled else [],
            "num_train_images": len(data.train),
            "num_val_images": len(data.val),
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


def _describe_epoch(record: dict, epochs: int) -> str:
    text = (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f} (clean {record['clean']:.4f}, "
        f"mixed {record['mixed']:.4f}), {record['images_per_s']:.1f} img/s, {record['seconds']:.0f} s"
    )
    if "val_map_at_r" in record:
        text += f"; val R@1 {record['val_recall_at_1']:.1f}, MAP@R {record['val_map_at_r']:.1f}"
    if "test_map_at_r" in record:
        text += f" [test R@1 {record['test_recall_at_1']:.1f}, MAP@R {record['test_map_at_r']:.1f}: reported, never chosen on]"
    if "train_map_at_r" in record:
        text += f" (training classes: R@1 {record['train_recall_at_1']:.1f}, MAP@R {record['train_map_at_r']:.1f})"
    return text
