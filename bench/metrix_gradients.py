"""Why does (or doesn't) Metrix change training? Compare, on real training batches, the gradient
of the clean loss with the gradient of w x the mixed loss on the trained parameters: their norm
ratio and their cosine. A cached-stages (cpu recipe) run is measured at the start of training and
at its best checkpoint; a whole-network (full-cpu) run on fresh training crops, every parameter
trained, at its best checkpoint (chosen on validation) and its last epoch (more over-fitted).

    .venv/bin/python bench/metrix_gradients.py bench/results/cpu_recipe-cub100/ms-none-s0
    .venv/bin/python bench/metrix_gradients.py bench/results/full_cpu-cub100/ms-none-s0 --negatives auto

A ratio near 0 means the mixed term barely moves the model; a cosine near 1 means it pushes
where the clean loss already does (no new information); a negative cosine means it fights it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from metrix.losses import build_loss
from metrix.mixup import Metrix
from metrix.model import EmbeddingModel, freeze_batchnorm, init_head_with_pca, pool
from metrix.training.checkpoint import build_model, load_checkpoint
from metrix.training.config import TrainConfig
from metrix.training.data import load_training_data
from metrix.training.image_dataset import ImageDataset
from metrix.training.sampler import build_sampler
from metrix.training.stage_cache import CachedTail, FeatureCache
from metrix.transforms import train_transform


def starting_model(config: TrainConfig, cache: FeatureCache, start: int, preprocessing) -> EmbeddingModel:
    model = EmbeddingModel.create(config.backbone, config.embedding_size)
    model.backbone.preprocessing = preprocessing
    model.eval()
    with torch.no_grad():
        pooled = torch.cat(
            [
                pool(model.backbone.run_stages(cache.features[i : i + 64, 0].float(), start))
                for i in range(0, len(cache.labels), 64)
            ]
        )
    init_head_with_pca(model.embedding_head, pooled)
    return model


def gradient_stats(model, forward, batches, start, config, num_classes, mode, negatives) -> dict:
    """`forward`: what Metrix runs (the cached tail, or the whole model); `batches`: (x, y) pairs."""
    model.train()
    freeze_batchnorm(model)
    for stage in model.backbone.stages()[:start]:
        stage.eval()
        stage.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    weight = config.mixup_weight
    loss = build_loss(config.loss, num_classes=num_classes, embedding_size=config.embedding_size)
    metrix = Metrix(
        loss,
        mode=mode,
        alpha=config.mixup_alpha,
        weight=weight,
        negatives_per_anchor=negatives,
        seed=0,
        pair_choice=config.pair_choice,
    )
    ratios, cosines = [], []
    for x, y in batches:
        out = metrix(forward, x.contiguous(memory_format=torch.channels_last), y)
        clean = torch.cat([g.flatten() for g in torch.autograd.grad(out.clean, params, retain_graph=True)])
        mixed = weight * torch.cat([g.flatten() for g in torch.autograd.grad(out.mixed, params)])
        ratios.append(float(mixed.norm() / clean.norm()))
        cosines.append(float(torch.nn.functional.cosine_similarity(clean, mixed, dim=0)))
    return {
        "ratio": statistics.mean(ratios),
        "cosine": statistics.mean(cosines),
        "cosine_sd": statistics.stdev(cosines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained --recipe cpu or --recipe full-cpu run")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--modes", nargs="+", default=["feature", "embed"])
    parser.add_argument("--negatives", nargs="+", default=["3", "1"], help="per anchor: numbers, or auto")
    args = parser.parse_args()
    negatives_options = [n if n == "auto" else int(n) for n in args.negatives]

    checkpoint = load_checkpoint(args.run, "best")
    trained = build_model(checkpoint)
    config = TrainConfig.from_dict(checkpoint.config["train_config"])
    data = load_training_data(config, log=lambda *a: None)
    label_map = {c: i for i, c in enumerate(data.train.classes)}
    sampler = build_sampler(config.sampler, data.train.labels, config.batch_size, config.samples_per_class, seed=123)
    if config.cached_views:
        start = config.frozen_stages(len(trained.backbone.stages()))
        cache = FeatureCache.build(trained, data.train.samples, label_map, start, config.cached_views, config.seed)
        models = {"start": starting_model(config, cache, start, trained.preprocessing), "trained": trained}
        batches = [cache.batch(indices, epoch_seed=step) for step, indices in zip(range(args.batches), sampler)]
        forward = {name: CachedTail(model, start) for name, model in models.items()}
    else:  # the whole network trains: real crops, through every layer
        start = 0
        models = {f"best ({checkpoint.path.name})": trained}
        latest = load_checkpoint(args.run, "latest")
        if latest.path.name != checkpoint.path.name:
            models[f"last ({latest.path.name})"] = build_model(latest)
        crops = ImageDataset(data.train.samples, train_transform(trained.preprocessing), label_map, seed=123)
        batches = [
            next(iter(DataLoader(crops, batch_sampler=[indices]))) for _, indices in zip(range(args.batches), sampler)
        ]
        forward = dict(models)
    models = {name: m.to(memory_format=torch.channels_last) for name, m in models.items()}

    print(
        f"{config.loss} on {config.data or data.name}, {args.batches} {config.sampler} batches, w = {config.mixup_weight}"
    )
    print("| model | mixing | negatives per anchor | w x mixed / clean gradient norm | cosine (sd) |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        for mode in args.modes:
            for negatives in negatives_options:
                stats = gradient_stats(model, forward[name], batches, start, config, len(label_map), mode, negatives)
                print(
                    f"| {name} | {mode} | {negatives} | {stats['ratio']:.2f} | {stats['cosine']:.2f} "
                    f"({stats['cosine_sd']:.2f}) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
