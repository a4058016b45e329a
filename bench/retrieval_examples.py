"""A picture of what two trained runs retrieve: for a few test queries, each run's top-8 gallery
images side by side, framed green (same class as the query) or red.

    .venv/bin/python bench/retrieval_examples.py bench/results/cpu_recipe-cub100/ms-none-s0 \\
        bench/results/cpu_recipe-cub100/ms-feature-s0 --out docs/retrievals-cub100.png

Queries are drawn at random (--seed) from the test classes, not picked by outcome; every other
test image is the gallery, as in `metrix evaluate`.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from metrix.images import open_rgb
from metrix.training.checkpoint import build_model, load_checkpoint
from metrix.training.config import TrainConfig
from metrix.training.data import load_training_data
from metrix.training.embedding import embed_samples

TOP = 8
THUMB = 96
GAP = 24


def embed_test_split(run: Path):
    checkpoint = load_checkpoint(run, "best")
    model = build_model(checkpoint)
    config = TrainConfig.from_dict(checkpoint.config["train_config"])
    data = load_training_data(config, log=lambda *a: None)
    embeddings, labels = embed_samples(
        model, data.test.samples, frozen_stages=config.frozen_stages(len(model.backbone.stages())), channels_last=True
    )
    mixing = "no mixing" if config.mixup == "none" else f"Metrix {config.mixup}"
    return data.test.samples, embeddings, labels, f"{config.loss}, {mixing} (seed {config.seed})"


def top_k(embeddings: np.ndarray, query: int) -> np.ndarray:
    scores = embeddings @ embeddings[query]
    scores[query] = -np.inf
    return np.argsort(-scores, kind="stable")[:TOP]


def thumbnail(path: Path, colour: str | None) -> Image.Image:
    image = ImageOps.fit(open_rgb(path), (THUMB, THUMB))
    return ImageOps.expand(image, border=4, fill=colour or "white")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    samples, base, labels, base_name = embed_test_split(args.baseline)
    other_samples, other, _, other_name = embed_test_split(args.other)
    if [s.path for s in samples] != [s.path for s in other_samples]:
        raise SystemExit("the two runs were not trained on the same data split")
    queries = random.Random(args.seed).sample(range(len(samples)), args.queries)

    cell, row_height, top = THUMB + 8, THUMB + 8 + 16, 24
    block = TOP * cell
    canvas = Image.new("RGB", (cell + 2 * (GAP + block), top + len(queries) * row_height), "white")
    draw = ImageDraw.Draw(canvas)
    for x, name in ((0, "query"), (cell + GAP, base_name), (cell + 2 * GAP + block, other_name)):
        draw.text((x, 4), name, fill="black")
    for row, query in enumerate(queries):
        y = top + row * row_height + 14
        canvas.paste(thumbnail(samples[query].path, None), (0, y))
        for block_index, embeddings in enumerate((base, other)):
            left = cell + GAP + block_index * (block + GAP)
            hits = top_k(embeddings, query)
            for rank, hit in enumerate(hits):
                colour = "#2e9e44" if labels[hit] == labels[query] else "#d62728"
                canvas.paste(thumbnail(samples[hit].path, colour), (left + rank * cell, y))
            correct = int((labels[hits] == labels[query]).sum())
            draw.text((left, y - 13), f"{correct}/{TOP} of the query's class", fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out}: {len(queries)} queries, top-{TOP} of {base_name} vs {other_name}")


if __name__ == "__main__":
    main()
