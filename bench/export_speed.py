"""Embedding speed of a trained run: eager PyTorch vs onnxruntime fp32 vs onnxruntime int8, on the
same images, in one process, with the same number of threads; and the end-to-end time of one
query (decode a JPEG + resize + crop + embed).

    .venv/bin/python bench/export_speed.py --run bench/results/cpu_recipe-cub100/ms-none-s0 \
        --out bench/results/export_speed-cub100-160.json

--image-size serves the same weights at another input size (224: ENGINEERING.md's compute floor of
about 4.6 ms/image for Lite0 is for 224 px). Engines are timed in turns, round after round, and
the median of the rounds is reported, so a noisy neighbour hits all of them alike. Eager PyTorch
is timed with contiguous and with channels_last weights; the table keeps the faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from metrix.cli.run_export import describe, run_data
from metrix.export.onnx_export import ImageEmbedder, check_parity, save_checked, to_onnx, verification_images
from metrix.export.quantize import CALIBRATION_IMAGES, quantize_int8
from metrix.export.runtime import load_embedder, preprocess
from metrix.images import open_rgb
from metrix.machine import cpu_name
from metrix.training.checkpoint import build_model, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--image-size", type=int, help="serve at this input size instead of the run's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = load_checkpoint(args.run, args.checkpoint)
    model = build_model(ckpt)
    if args.image_size:
        model.backbone.preprocessing = model.preprocessing.with_size(args.image_size)
    metadata = describe(ckpt, model)
    data = run_data(ckpt)
    if data is None:
        raise SystemExit(f"{args.run}: its data ({metadata.training_data}) is needed for real test images")
    test_paths = [s.path for s in data.test.samples]
    images = verification_images(test_paths, metadata, args.images)
    eager = ImageEmbedder(model).eval()

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        save_checked(to_onnx(eager, metadata), fp32_path, fp32_path)
        parity = check_parity(eager, fp32_path, images)
        quantize_int8(
            fp32_path,
            int8_path,
            verification_images([s.path for s in data.train.samples], metadata, CALIBRATION_IMAGES),
        )
        engines = {
            "onnxruntime fp32": load_embedder(fp32_path, args.threads).embed,
            "onnxruntime int8": load_embedder(int8_path, args.threads).embed,
        }
        channels_last = ImageEmbedder(build_model(ckpt).to(memory_format=torch.channels_last)).eval()
        for name, module in (("pytorch eager", eager), ("pytorch eager channels_last", channels_last)):
            engines[name] = _torch_engine(module)

        timings = {name: {1: [], 32: []} for name in engines}
        for _ in range(args.rounds):
            for name, embed in engines.items():
                embed(images[:1])  # warm the engine after the others ran
                start = time.perf_counter()
                for i in range(len(images)):
                    embed(images[i : i + 1])
                timings[name][1].append((time.perf_counter() - start) / len(images))
                start = time.perf_counter()
                embed(images)
                timings[name][32].append((time.perf_counter() - start) / len(images))
        query = _single_query(
            load_embedder(fp32_path, args.threads), test_paths[:: max(1, len(test_paths) // 50)], args.rounds
        )

    rows = {
        name: {f"ms_per_image_b{b}": 1000 * statistics.median(t) for b, t in by_batch.items()}
        for name, by_batch in timings.items()
    }
    eager_name = min(("pytorch eager", "pytorch eager channels_last"), key=lambda n: rows[n]["ms_per_image_b1"])
    result = {
        "command": "bench/export_speed.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores; {args.threads} threads",
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "model": f"{metadata.backbone} at {metadata.image_size} px -> {metadata.embedding_size}-d ({args.run})",
        "parity": [str(p) for p in parity],
        "engines": rows,
        "eager_baseline": eager_name,
        "onnx_fp32_speedup_b1": rows[eager_name]["ms_per_image_b1"] / rows["onnxruntime fp32"]["ms_per_image_b1"],
        "onnx_fp32_speedup_b32": rows[eager_name]["ms_per_image_b32"] / rows["onnxruntime fp32"]["ms_per_image_b32"],
        "single_query_ms": query,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))


def _torch_engine(module):
    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch))[0].numpy()

    return embed


def _single_query(embedder, paths: list[Path], rounds: int) -> dict:
    """Median over files and rounds of decode + resize/crop, and of the whole query."""
    decode, total = [], []
    for _ in range(rounds):
        for path in paths:
            start = time.perf_counter()
            batch = preprocess(open_rgb(path), embedder.metadata)[None]
            prepared = time.perf_counter()
            embedder.embed(batch)
            decode.append(prepared - start)
            total.append(time.perf_counter() - start)
    return {
        "decode_resize_ms": 1000 * statistics.median(decode),
        "total_ms": 1000 * statistics.median(total),
        "files": len(paths),
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['model']}; {result['machine']}",
        "",
        "| engine | ms/image, batch 1 | images/s, batch 1 | ms/image, batch 32 | images/s, batch 32 |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["engines"].items():
        b1, b32 = row["ms_per_image_b1"], row["ms_per_image_b32"]
        lines.append(f"| {name} | {b1:.2f} | {1000 / b1:.0f} | {b32:.2f} | {1000 / b32:.0f} |")
    q = result["single_query_ms"]
    lines += [
        "",
        f"onnxruntime fp32 vs {result['eager_baseline']}: {result['onnx_fp32_speedup_b1']:.2f}x at batch 1, "
        f"{result['onnx_fp32_speedup_b32']:.2f}x at batch 32",
        f"single query (JPEG decode + resize + crop + embed, fp32): {q['total_ms']:.1f} ms, of which decode "
        f"and resize {q['decode_resize_ms']:.1f} ms ({q['files']} files)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
