"""The near-duplicate thresholds calibrated on the gallery itself: copies of a sample of the
gallery's own images are made with the edits duplicates really have (EDITS), embedded with the
index's model (sample_copies), and set against look-alikes: the pairs the duplicates search checks
that neither of their images holds among its three nearest (CopySample.thresholds). Two thresholds
come out:
- the candidate threshold on the embedding's cosine, chosen for recall: COPY_RECALL of the copies
  reach it, whatever this model's scale of similarities;
- the copy check's threshold on aligned pixels (index/copy_check.py), chosen for precision: the
  look-alike pairs expected to pass it stay within MAX_FALSE_PER_1000 per 1,000 gallery images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .store import GalleryIndex

#: Gallery images copied (7 edits each) to calibrate.
ORIGINALS = 100
#: Share of the calibration copies whose embedding must reach the copy check: the candidate
#: threshold is their (1 - COPY_RECALL) quantile.
COPY_RECALL = 0.98
#: How many candidates an image has at most (index/duplicates.py checks as many).
CANDIDATES = 6
#: The checked pairs that stand for look-alikes: those neither image holds among its nearest
#: LOOKALIKE_RANK - 1. An image and two copies of it are common, and a real copy counted as a
#: look-alike would raise the copy threshold for nothing.
LOOKALIKE_RANK = 4
#: The copy check's threshold keeps the look-alike pairs expected to pass within this many per
#: 1,000 gallery images, and is never below COPY_FLOOR.
MAX_FALSE_PER_1000, COPY_FLOOR = 1.0, 0.8
#: The calibration set's precision the copy threshold keeps (copies found against look-alike pairs passed).
TARGET_PRECISION = 0.99
#: Below this share of calibration copies found, copies cannot be told from look-alikes here.
MIN_FOUND = 0.5
#: NCC is capped here before its tail is fitted (a perfect 1.0 would be an infinite z).
MAX_NCC = 0.9999


def _jpeg(picture: Image.Image, rng) -> Image.Image:
    return picture  # the encoding itself is the edit: saved below at a low quality


def _resize(picture: Image.Image, rng) -> Image.Image:
    scale = rng.uniform(0.4, 0.7)
    return picture.resize((max(8, round(picture.width * scale)), max(8, round(picture.height * scale))), Image.LANCZOS)


def _crop(picture: Image.Image, rng) -> Image.Image:
    keep = rng.uniform(0.8, 0.92)  # of each side, placed at random
    w, h = round(picture.width * keep), round(picture.height * keep)
    x, y = rng.integers(0, picture.width - w + 1), rng.integers(0, picture.height - h + 1)
    return picture.crop((x, y, x + w, y + h))


def _flip(picture: Image.Image, rng) -> Image.Image:
    return ImageOps.mirror(picture)


def _rotate(picture: Image.Image, rng) -> Image.Image:
    return picture.rotate(rng.choice([-1, 1]) * rng.uniform(2, 6), Image.BICUBIC, expand=True, fillcolor=(0, 0, 0))


def _brightness(picture: Image.Image, rng) -> Image.Image:
    return ImageEnhance.Brightness(picture).enhance(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.35)]))


def _border(picture: Image.Image, rng) -> Image.Image:
    """A screenshot-style frame: a flat margin of 3-10% around the picture."""
    margin = max(1, round(max(picture.size) * rng.uniform(0.03, 0.1)))
    colour = tuple(int(v) for v in rng.choice([[255, 255, 255], [0, 0, 0], [240, 240, 240]]))
    return ImageOps.expand(picture, border=margin, fill=colour)


#: The edits duplicates have, each with strengths drawn per image (seeded).
EDITS = {
    "jpeg": _jpeg,
    "resize": _resize,
    "crop": _crop,
    "flip": _flip,
    "rotate": _rotate,
    "brightness": _brightness,
    "border": _border,
}


def edited_copy(picture: Image.Image, edit: str, rng) -> bytes:
    """The copy as a file would hold it: edited, then saved as JPEG (quality 20-40 for "jpeg", else 90)."""
    out = io.BytesIO()
    quality = int(rng.integers(20, 41)) if edit == "jpeg" else 90
    EDITS[edit](picture, rng).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


@dataclass
class Calibration:
    """The two thresholds of `metrix duplicates` for one gallery and model, and what they did on the
    calibration set: the gallery's own images, their edited copies and their look-alikes."""

    candidate_threshold: float  # embedding cosine: COPY_RECALL of the copies reach the copy check
    copy_threshold: float  # the copy check's aligned NCC (index/copy_check.py)
    originals: int  # gallery images copied
    copies: int  # edited copies made of them
    lookalike_pairs: int  # checked pairs that neither image holds among its nearest three
    copies_found: float  # share of the copies that pass both thresholds
    lookalikes_passed: float  # share of the look-alike pairs that pass both
    false_pairs_per_1000: float  # look-alike pairs expected to pass, per 1,000 gallery images
    precision: float  # copies found / (copies found + look-alike pairs passed), on the calibration set
    found_by_edit: dict[str, float]
    seconds: float

    @property
    def separable(self) -> bool:
        return self.copies_found >= MIN_FOUND and self.false_pairs_per_1000 <= MAX_FALSE_PER_1000

    def to_json(self) -> dict:
        rounded = {k: round(v, 6) if isinstance(v, float) else v for k, v in vars(self).items()}
        return {**rounded, "separable": self.separable}


@dataclass
class CopySample:
    """Copies of a sample of the gallery, embedded and compared with their originals: the candidate
    threshold, and each copy's copy-check NCC; the look-alikes come later (thresholds)."""

    candidate_threshold: float
    reached: np.ndarray  # each copy's cosine to its original is at least the candidate threshold
    copy_ncc: np.ndarray  # each copy's NCC with its original (index/copy_check.py)
    edits: np.ndarray  # each copy's edit
    originals: int
    seconds: float

    def thresholds(self, lookalike_ncc: np.ndarray, pairs_per_image: float) -> Calibration:
        """The lowest copy threshold (from COPY_FLOOR, in steps of 0.01) at which the calibration
        set's precision is at least TARGET_PRECISION and the look-alike pairs expected to pass stay
        within MAX_FALSE_PER_1000 per 1,000 images; 0.99 if none is. `pairs_per_image`: the pairs
        the search checks per gallery image."""
        reached, copy_ncc = self.reached, self.copy_ncc

        def false_per_1000(t: float) -> float:
            return 1000 * pairs_per_image * tail_share(lookalike_ncc, t)

        def precision(t: float) -> float:
            found = int((reached & (copy_ncc >= t)).sum())
            return found / max(1, found + int((lookalike_ncc >= t).sum()))

        grid = np.round(np.arange(COPY_FLOOR, 1.0, 0.01), 2)
        ok = (t for t in grid if precision(t) >= TARGET_PRECISION and false_per_1000(t) <= MAX_FALSE_PER_1000)
        copy_threshold = float(next(ok, grid[-1]))
        found = reached & (copy_ncc >= copy_threshold)
        passed = int((lookalike_ncc >= copy_threshold).sum())
        return Calibration(
            self.candidate_threshold,
            copy_threshold,
            self.originals,
            len(found),
            len(lookalike_ncc),
            float(found.mean()),
            passed / len(lookalike_ncc) if len(lookalike_ncc) else 0.0,
            false_per_1000(copy_threshold),
            precision(copy_threshold),
            {edit: float(found[self.edits == edit].mean()) for edit in EDITS},
            self.seconds,
        )


def sample_copies(index: GalleryIndex, embedder, originals: int = ORIGINALS, seed: int = 0) -> CopySample:
    """Copies (EDITS) of a seeded sample of the gallery, embedded with the index's model."""
    import time

    from .copy_check import CopyCheck

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    ids = np.array([row[0] for row in index.db.execute("SELECT id FROM images ORDER BY id")], np.int64)
    made, copy_cosines = _copies(
        index, embedder, ids[np.sort(rng.choice(len(ids), min(originals, len(ids)), replace=False))], rng
    )
    check = CopyCheck(made.__getitem__, index)
    cosines = np.array(copy_cosines, np.float32)
    candidate = float(np.quantile(cosines, 1 - COPY_RECALL))
    return CopySample(
        candidate,
        cosines >= candidate,
        np.array([check.similarity(key[0], key) for key in made], np.float32),
        np.array([edit for _, edit in made]),
        len({image_id for image_id, _ in made}),
        time.perf_counter() - started,
    )


def _copies(index: GalleryIndex, embedder, sample: np.ndarray, rng) -> tuple[dict[tuple, bytes], list[float]]:
    """({(image id, edit): the copy's bytes}, each copy's cosine to its original's stored vector)."""
    from metrix.export.runtime import load_for_model
    from metrix.images import ImageDecodeError, decode_rgb

    paths = {i: row[0] for i, row in index.rows(sample.tolist()).items()}
    made, cosines = {}, []
    for image_id in sample.tolist():
        try:
            picture, _ = decode_rgb(paths[image_id], index.source.read(paths[image_id]))
        except (OSError, ImageDecodeError):
            continue
        batch = []
        for edit in EDITS:
            made[(image_id, edit)] = edited_copy(picture, edit, rng)
            batch.append(
                load_for_model(f"{paths[image_id]} ({edit})", embedder.metadata, data=made[(image_id, edit)])[0]
            )
        cosines += (embedder.embed(np.stack(batch)) @ index.vectors([image_id])[0]).tolist()
    if not made:
        raise ValueError(
            f"{index.generation}: none of the {len(sample)} gallery images sampled to calibrate could be read"
        )
    return made, cosines


def tail_share(values: np.ndarray, t: float) -> float:
    """The share of look-alike pairs at or above t. Where the sample holds fewer than 10 such pairs,
    an exponential tail (peaks over threshold) fitted to z = -log(1 - NCC) above the sample's 90th
    percentile extrapolates it: a sample of a few thousand pairs cannot count a share of 1 in 10,000."""
    if len(values) == 0:
        return 0.0
    above = float(np.mean(values >= t))
    z = -np.log1p(-np.minimum(values, MAX_NCC))
    level = float(np.quantile(z, 0.9))
    excess = z[z > level] - level
    z_t = -np.log1p(-min(t, MAX_NCC))
    if above * len(values) >= 10 or len(excess) < 5 or z_t <= level:
        return above
    return float(np.mean(z > level) * np.exp(-(z_t - level) / excess.mean()))
