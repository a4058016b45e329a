"""Test pictures the tiny test model tells apart, and the check that it does.

The session's tiny model (2 epochs, 32 px, 32-d) crowds its embeddings: on flat colour blocks
alone it put two different pictures at cosine 0.99999988, so "each image comes back as itself"
turned on how a CPU rounds. Blocks with per-pixel noise give it texture to respond to: over six
tiny models (3 seeds x 2 epochs) the closest pair in the index and app galleries stayed below 0.96,
while the same image embedded alone and in a batch agrees to 4e-7. Galleries that a test
searches by self-retrieval are checked with `assert_apart` where they are made, so a change that
collapses them fails there, in one line, instead of as a wrong top hit somewhere else.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from metrix.export.runtime import load_embedder, load_for_model

#: The closest two different pictures of a gallery may be: 1 - 0.99 is 10^4 times the rounding
#: between two embeddings of one image, and well above what the tiny model gives (below 0.96).
MAX_COSINE = 0.99


def blocks(seed: int, size=(64, 64)) -> Image.Image:
    """A distinct picture: a random 4 x 4 grid of colours, scaled up, with per-pixel noise."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(grid).resize(size, Image.Resampling.NEAREST), dtype=np.int16)
    noise = rng.integers(-90, 91, image.shape, dtype=np.int16)
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))


def assert_apart(model: Path, root: Path, paths, max_cosine: float = MAX_COSINE) -> None:
    """Fail unless `model` embeds every two of these files (relative to root, loaded as the
    indexer loads them) at a cosine below max_cosine."""
    paths = sorted(paths)
    embedder = load_embedder(model)
    vectors = embedder.embed(np.stack([load_for_model(root / p, embedder.metadata)[0] for p in paths]))
    cosine = vectors @ vectors.T
    np.fill_diagonal(cosine, -np.inf)
    i, j = np.unravel_index(np.argmax(cosine), cosine.shape)
    assert cosine[i, j] < max_cosine, (
        f"the test model cannot tell {paths[i]} from {paths[j]}: cosine "
        f"{cosine[i, j]:.8f} >= {max_cosine}, so self-retrieval would test rounding"
    )
