"""Backbones for docs/backbones.md: size, embedding width and onnxruntime speed at each one's
native input size (or NAME@SIZE), and the untrained floor of those whose weights install offline.

Speed does not depend on the weights, so every backbone is exported with random weights where
its pretrained ones cannot be had here (no network): each export goes through `export_backbone`,
the same path and parity check as a trained run. Images/s: uint8 images through the exported
graph (onnxruntime, all cores), batch --batch, the median of --repeats timed calls after one
warm-up call.

Floors: the pooled pretrained features, L2-normalised, on the test classes of cub100 (50-99) and
omniglot_small (the second half of the characters), each image against all others, at the
backbone's native size.

    .venv/bin/python bench/backbones.py --out bench/results/backbones.json
    .venv/bin/python bench/backbones.py --floors ../shared/datasets/cub100 ../shared/datasets/omniglot_small
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

OFFLINE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: DINOv2 is trained at 518 px; these rows time it at 224 (--image-size 224), the CPU-friendly size.
AT_224 = ("vit_small_patch14_dinov2.lvd142m@224", "vit_base_patch14_dinov2.lvd142m@224")


def speed(name: str, batch: int, repeats: int) -> dict:
    from metrix.backbones import TIMM_PREFIX, create_backbone, local_weights
    from metrix.export.onnx_export import export_backbone
    from metrix.export.quantize import ms_per_image
    from metrix.export.runtime import load_embedder

    name, _, size = name.partition("@")  # NAME@SIZE: at another input size than its own
    full = name if name in OFFLINE else TIMM_PREFIX + name
    pretrained = local_weights(full) is not None
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        metadata, parity = export_backbone(full, Path(tmp) / "model.onnx", int(size) if size else None, pretrained)
        export_seconds = time.perf_counter() - started
        size_mb = (Path(tmp) / "model.onnx").stat().st_size / 1e6
        embedder = load_embedder(Path(tmp) / "model.onnx")
        images = np.random.default_rng(0).integers(
            0, 256, (batch, metadata.image_size, metadata.image_size, 3), dtype=np.uint8
        )
        ms = ms_per_image(embedder, images, repeats)
    backbone = create_backbone(full, pretrained=False)
    return {
        "backbone": full,
        "weights": "pretrained (offline)" if pretrained else "random (speed only)",
        "params_m": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 1),
        "image_size": metadata.image_size,
        "embedding": metadata.embedding_size,
        "onnx_mb": round(size_mb, 1),
        "images_per_s": round(1000 / ms, 2),
        "export_s": round(export_seconds, 1),
        "parity": [str(p) for p in parity],
    }


def floor(name: str, data_root: str) -> dict:
    import torch

    from metrix.backbones import create_backbone
    from metrix.evaluation.metrics import evaluate_retrieval
    from metrix.model import PooledBackbone
    from metrix.training.config import TrainConfig
    from metrix.training.data import load_training_data
    from metrix.training.embedding import embed_samples

    data = load_training_data(TrainConfig(data=data_root), log=lambda *a, **k: None)
    model = PooledBackbone(create_backbone(name, pretrained=True))
    started = time.perf_counter()
    embeddings, labels = embed_samples(model, data.test.samples, batch_size=64, num_workers=2, channels_last=True)
    seconds = time.perf_counter() - started
    report = evaluate_retrieval(embeddings, labels, ks=(1, 2, 4, 8), nmi=False)
    return {
        "backbone": name,
        "data": Path(data_root).name,
        "split": f"test: {len(labels)} images, {len(set(labels.tolist()))} classes",
        "image_size": model.preprocessing.image_size,
        "recall_at_1": round(report.recall_at[1], 2),
        "map_at_r": round(report.map_at_r, 2),
        "images_per_s_torch": round(len(labels) / seconds, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    from metrix.backbones.timm_backbone import RECOMMENDED
    from metrix.machine import cpu_name

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="*", default=[*OFFLINE, *RECOMMENDED, *AT_224])
    parser.add_argument("--floors", nargs="*", default=[], help="data folders to measure the offline floors on")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/backbones.json"))
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["machine"] = f"{cpu_name()}, {os.cpu_count()} cores"
    if args.floors:
        for root in args.floors:
            for name in OFFLINE:
                row = floor(name, root)
                print(json.dumps(row), flush=True)
                results.setdefault("floors", {})[f"{name}@{row['data']}"] = row
                args.out.write_text(json.dumps(results, indent=2))
        return
    for name in args.backbones:
        row = speed(name, args.batch, args.repeats)
        print(json.dumps(row), flush=True)
        results.setdefault("speed", {})[f"{row['backbone']}@{row['image_size']}"] = row
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
