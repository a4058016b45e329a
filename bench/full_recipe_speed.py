"""Speed of the full CPU recipe's training step: images/s against the compute floor, the cost of
Metrix feature mixing per step, bfloat16 autocast, torch.compile, and decoding once vs every epoch.

    .venv/bin/python bench/full_recipe_speed.py --images ../shared/datasets/cub100 --json bench/results/full_recipe_speed.json

EfficientNet-Lite0 (every layer trains, BatchNorm frozen, channels_last), a batch of 20 classes x
5 images, MS loss; each case is a full step (forward, Metrix, backward, AdamW). Cases are
interleaved over the repeats and the median is taken, so ratios come from one run. The compute
floor is the measured fp32 GEMM rate over the model's training FLOPs (3 x the forward's, counted
by torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from metrix.datasets import load_image_folder
from metrix.losses import build_loss
from metrix.machine import cpu_name
from metrix.mixup import Metrix
from metrix.model import BFloat16Features, EmbeddingModel, freeze_batchnorm
from metrix.training.decoded_images import DecodedImages
from metrix.training.image_dataset import ImageDataset
from metrix.transforms import train_transform


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="an image folder (the data-path cases)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd model (slow to compile)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    size, batch = args.image_size, 100
    labels = torch.arange(20).repeat_interleave(5)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    model = EmbeddingModel.create("efficientnet_lite0", 512).to(memory_format=torch.channels_last)
    model.train()
    freeze_batchnorm(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images[:1])
    train_flops = 3 * counter.get_total_flops()
    peak = gemm_gflops()

    split_models = {"fp32": model, "bf16": BFloat16Features(model)}
    if args.compile:
        compiled = torch.compile(model.backbone)

        class Compiled:
            features = staticmethod(lambda x: compiled(x))
            head = staticmethod(model.head)

        split_models["compiled"] = Compiled()
    cases = {
        f"{precision} {mode}": (split_models[precision], Metrix(build_loss("ms"), mode=mode, seed=0))
        for precision in split_models
        for mode in ("none", "feature")
    }

    def step(split, metrix):
        out = metrix(split, images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    compile_seconds = None
    for name, (split, metrix) in cases.items():  # warm-up (and compilation)
        seconds = _time(lambda: step(split, metrix))
        if name.startswith("compiled") and compile_seconds is None:
            compile_seconds = seconds
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (split, metrix) in cases.items():
            times[name].append(_time(lambda: step(split, metrix)))
    step_ms = {name: 1000 * statistics.median(t) for name, t in times.items()}

    # The data path: one batch of training crops from the files vs from pixels decoded once.
    data = load_image_folder(args.images)
    samples = data.train.samples[:batch]
    pre = model.preprocessing.with_size(size)
    transform = train_transform(pre)
    decoded = DecodedImages.decode(samples, pre.resize_size, pre.interpolation, threads=1)
    datasets = {
        "files": ImageDataset(samples, transform, seed=0),
        "decoded once": ImageDataset(samples, transform, seed=0, images=decoded),
    }
    data_ms = {
        name: 1000 * statistics.median(_time(lambda: [d[i] for i in range(batch)]) for _ in range(3))
        for name, d in datasets.items()
    }

    floor = peak * 1e9 / train_flops
    machine = cpu_name()
    result = {
        "machine": machine,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image_size": size,
        "batch": batch,
        "gemm_gflops": peak,
        "train_gflop_per_image": train_flops / 1e9,
        "compute_floor_images_per_s": floor,
        "step_ms": step_ms,
        "images_per_s": {name: batch * 1000 / ms for name, ms in step_ms.items()},
        "feature_over_none": {p: step_ms[f"{p} feature"] / step_ms[f"{p} none"] for p in split_models},
        "bf16_over_fp32": {m: step_ms[f"bf16 {m}"] / step_ms[f"fp32 {m}"] for m in ("none", "feature")},
        "compile_seconds": compile_seconds,
        "data_ms_per_batch": data_ms,
    }
    print(f"{machine}, {torch.get_num_threads()} threads, {size} px, batch {batch}")
    print(f"fp32 GEMM {peak:.0f} GFLOP/s; training {train_flops / 1e9:.3f} GFLOP/image -> floor {floor:.0f} images/s")
    print("| case | ms / step | images/s | of the floor |\n|---|---|---|---|")
    for name, ms in step_ms.items():
        print(f"| {name} | {ms:.0f} | {batch * 1000 / ms:.1f} | {batch * 1000 / ms / floor:.0%} |")
    for name, ms in data_ms.items():
        print(f"data, {name}: {ms:.0f} ms per batch of {batch} crops")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
