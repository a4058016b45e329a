"""Why this match: where two pictures agree, as a heat map over each of them.

The exported model's `cells` output embeds each location of the last feature map alone (as if
that patch were the whole picture, through the same pooling and head). A query cell's heat is
its cosine with the result's embedding, and a result cell's heat its cosine with the query's:
the parts of one picture that, alone, already look like the other. The maps are as coarse as the
feature map (5 x 5 for EfficientNet-Lite0 at 160 px, stride 32) and are drawn over the square
crop the model saw, bilinearly upsampled, on one colour scale for both pictures.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Colours from low to high heat (dark blue, purple, red, orange, pale yellow), interpolated.
ANCHORS = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], dtype=np.float32)
OPACITY = 0.55


@dataclass
class Explanation:
    score: float  # cosine of the two pictures' embeddings
    query_map: np.ndarray  # [h, w]: each query location's cosine with the result's embedding
    result_map: np.ndarray  # [h, w]: each result location's cosine with the query's embedding
    query_input: np.ndarray  # uint8 [S, S, 3]: what the model saw of the query
    result_input: np.ndarray

    @property
    def scale(self) -> tuple[float, float]:
        """The colour scale shared by both maps: their lowest and highest heat."""
        both = np.concatenate([self.query_map.ravel(), self.result_map.ravel()])
        return float(both.min()), float(both.max())

    def overlays(self, size: int = 256) -> tuple[Image.Image, Image.Image]:
        low, high = self.scale
        return (
            overlay(self.query_input, self.query_map, low, high, size),
            overlay(self.result_input, self.result_map, low, high, size),
        )

    def to_json(self) -> dict:
        query, result = self.overlays()
        return {
            "score": self.score,
            "grid": list(self.query_map.shape),
            "query_heatmap": np.round(self.query_map.astype(float), 4).tolist(),
            "result_heatmap": np.round(self.result_map.astype(float), 4).tolist(),
            "query_overlay": data_url(query),
            "result_overlay": data_url(result),
        }


def explain(embedder, query_input: np.ndarray, result_input: np.ndarray) -> Explanation:
    """Both pictures as the model's uint8 inputs [S, S, 3] (export.runtime.load_for_model)."""
    (query, result), (query_cells, result_cells) = embedder.embed_with_cells(np.stack([query_input, result_input]))
    return Explanation(float(query @ result), query_cells @ result, result_cells @ query, query_input, result_input)


def colour(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1] -> uint8 RGB, through ANCHORS."""
    position = np.clip(heat, 0, 1) * (len(ANCHORS) - 1)
    below = np.minimum(position.astype(int), len(ANCHORS) - 2)
    frac = (position - below)[..., None]
    return np.round(ANCHORS[below] * (1 - frac) + ANCHORS[below + 1] * frac).astype(np.uint8)


def overlay(picture: np.ndarray, heat: np.ndarray, low: float, high: float, size: int = 256) -> Image.Image:
    """The heat map [h, w] upsampled over the picture [S, S, 3], blended, at size x size."""
    base = Image.fromarray(picture).resize((size, size), Image.Resampling.BILINEAR)
    spread = Image.fromarray(((heat - low) / max(high - low, 1e-6)).astype(np.float32))
    heat_colours = colour(np.asarray(spread.resize((size, size), Image.Resampling.BILINEAR)))
    return Image.blend(base, Image.fromarray(heat_colours), OPACITY)


def side_by_side(explanation: Explanation, size: int = 256) -> Image.Image:
    """query | query's heat | result's heat | result: one picture for the command line."""
    query, result = explanation.overlays(size)
    tiles = [
        Image.fromarray(explanation.query_input).resize((size, size)),
        query,
        result,
        Image.fromarray(explanation.result_input).resize((size, size)),
    ]
    canvas = Image.new("RGB", (4 * size + 3 * 8, size), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * (size + 8), 0))
    return canvas


def data_url(picture: Image.Image) -> str:
    encoded = io.BytesIO()
    picture.save(encoded, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(encoded.getvalue()).decode()
