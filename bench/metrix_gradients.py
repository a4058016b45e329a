"""Why does (or doesn't) Metrix change training? Compare, on real training batches of the CPU
recipe, the gradient of the clean loss with the gradient of w x the mixed loss on the trained
parameters: their norm ratio and their cosine, at the start of training and at a trained run's
best checkpoint.

    .venv/bin/python bench/metrix_gradients.py bench/results/cpu_recipe-cub100/ms-none-s0

A ratio near 0 means the mixed term barely moves the model; a cosine near 1 means it pushes
where the clean loss already does (no new information); a negative cosine means it fights it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from metrix.losses import build_loss
from metrix.mixup import Metrix
from metrix.model import EmbeddingModel, freeze_batchnorm, init_head_with_pca, pool
from metrix.sampler import PKSampler
from metrix.training.checkpoint import build_model, load_checkpoint
from metrix.training.config import TrainConfig
from metrix.training.data import load_training_data
from metrix.training.feature_cache import CachedTail, FeatureCache


def starting_model(config: TrainConfig, cache: FeatureCache, start: int, preprocessing) -> EmbeddingModel:
    model = EmbeddingModel.create(config.backbone, config.embedding_size)
    model.backbone.preprocessing = preprocessing
    model.eval()
    with torch.no_grad():
        pooled = torch.cat([pool(model.backbone.run_stages(cache.features[i : i + 64, 0].float(), start))
                            for i in range(0, len(cache.labels), 64)])
    init_head_with_pca(model.embedding_head, pooled)
    return model


def gradient_stats(model, cache, sampler, start, config, mode, weight, negatives, batches) -> dict:
    model.train()
    freeze_batchnorm(model)
    for stage in model.backbone.stages()[:start]:
        stage.eval()
        stage.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = build_loss(config.loss, num_classes=len(set(cache.labels.tolist())), embedding_size=config.embedding_size)
    metrix = Metrix(loss, mode=mode, alpha=config.mixup_alpha, weight=weight, negatives_per_anchor=negatives, seed=0)
    tail = CachedTail(model, start)
    ratios, cosines = [], []
    for step, indices in enumerate(sampler):
        if step == batches:
            break
        x, y = cache.batch(indices, epoch_seed=step)
        out = metrix(tail, x.contiguous(memory_format=torch.channels_last), y)
        clean = torch.cat([g.flatten() for g in torch.autograd.grad(out.clean, params, retain_graph=True)])
        mixed = weight * torch.cat([g.flatten() for g in torch.autograd.grad(out.mixed, params)])
        ratios.append(float(mixed.norm() / clean.norm()))
        cosines.append(float(torch.nn.functional.cosine_similarity(clean, mixed, dim=0)))
    return {"ratio": statistics.mean(ratios), "cosine": statistics.mean(cosines), "cosine_sd": statistics.stdev(cosines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained --recipe cpu run")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--modes", nargs="+", default=["feature", "embed"])
    parser.add_argument("--negatives", nargs="+", type=int, default=[3, 1])
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.run, "best")
    trained = build_model(checkpoint)
    config = TrainConfig.from_dict(checkpoint.config["train_config"])
    data = load_training_data(config, log=lambda *a: None)
    start = config.frozen_stages(len(trained.backbone.stages()))
    label_map = {c: i for i, c in enumerate(data.train.classes)}
    cache = FeatureCache.build(trained, data.train.samples, label_map, start, config.cached_views, config.seed)
    sampler = PKSampler(data.train.labels, config.batch_size, config.samples_per_class, seed=123)
    models = {"start": starting_model(config, cache, start, trained.preprocessing), "trained": trained}
    models = {name: m.to(memory_format=torch.channels_last) for name, m in models.items()}

    print(f"{config.loss} on {config.data or data.name}, {args.batches} batches, w = {config.mixup_weight}")
    print("| model | mixing | negatives per anchor | w x mixed / clean gradient norm | cosine (sd) |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        for mode in args.modes:
            for negatives in args.negatives:
                stats = gradient_stats(model, cache, sampler, start, config, mode, config.mixup_weight, negatives,
                                       args.batches)
                print(f"| {name} | {mode} | {negatives} | {stats['ratio']:.2f} | {stats['cosine']:.2f} "
                      f"({stats['cosine_sd']:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
