"""A built-in synthetic, fine-grained image dataset, written to disk as an ImageFolder.

Each class is one combination of shape x fill pattern x two-colour palette (5 x 4 x 6 = 120
classes), so every class has 12 neighbours that differ from it in a single attribute. The
palettes are the ordered pairs of three base colours, so palettes share their colours and the
class is not given away by global colour statistics. Every image is drawn from its own random
generator, seeded by (seed, class, index), with strong nuisance variation: pose, scale, aspect,
position, pattern phase, colour jitter, a cluttered background in the same colours, occlusion,
blur and noise. Generation is deterministic and byte-identical for any number of workers.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..cache import cache_root

FORMAT_VERSION = 1
MANIFEST = "synthetic.json"
SYNTHETIC_DEFAULTS = {"num_classes": 120, "images_per_class": 30, "image_size": 96, "seed": 0}

SHAPES = ("circle", "triangle", "square", "star", "cross")
PATTERNS = ("solid", "stripes", "dots", "checks")
_RED, _YELLOW, _BLUE = (0.0, 0.85, 0.85), (0.14, 0.85, 0.92), (0.61, 0.8, 0.8)  # HSV
PALETTES = {  # name: (fill, marks); the ordered pairs of three base colours
    "sunset": (_RED, _YELLOW),
    "lemon": (_YELLOW, _RED),
    "berry": (_RED, _BLUE),
    "navy": (_BLUE, _RED),
    "ocean": (_BLUE, _YELLOW),
    "sand": (_YELLOW, _BLUE),
}
# Class k: the shape varies fastest, then the palette, then the pattern, so that a small
# num_classes still mixes shapes and colours.
CLASS_SPECS = tuple((shape, pattern, palette) for pattern in PATTERNS for palette in PALETTES for shape in SHAPES)


def class_names(num_classes: int = SYNTHETIC_DEFAULTS["num_classes"]) -> list[str]:
    """Folder names of the first num_classes classes, e.g. '000_circle-solid-sunset'."""
    if not 1 <= num_classes <= len(CLASS_SPECS):
        raise ValueError(f"num_classes must lie in [1, {len(CLASS_SPECS)}], got {num_classes}")
    return [_name(k) for k in range(num_classes)]


def _name(class_index: int) -> str:
    return f"{class_index:03d}_{'-'.join(CLASS_SPECS[class_index])}"


def _outline(shape: str) -> np.ndarray:
    """Vertices of the shape at unit radius, as an (n, 2) array."""

    def ring(n, radius=1.0, start=-np.pi / 2):
        t = start + 2 * np.pi * np.arange(n) / n
        return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)

    if shape == "circle":
        return ring(48, 0.9)
    if shape == "triangle":
        return ring(3, 1.1)
    if shape == "square":
        return ring(4, 1.0, np.pi / 4)
    if shape == "star":
        outer, inner = ring(5, 1.1), ring(5, 0.48, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], 1).reshape(-1, 2)
    a, b = 0.34, 0.95  # cross: arm half-width and length
    return np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    )


def _jitter(hsv, rng, hue, light) -> tuple[int, int, int]:
    """An RGB colour near `hsv`: the image's shared hue shift and lightness plus a little more."""
    h, s, v = hsv
    h = (h + hue + rng.uniform(-0.01, 0.01)) % 1.0
    s = np.clip(s * rng.uniform(0.75, 1.1), 0, 1)
    v = np.clip(v * light * rng.uniform(0.95, 1.05), 0, 1)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def _random_colour(rng, saturation=(0.0, 1.0), value=(0.2, 1.0)) -> tuple[int, int, int]:
    hsv = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(*hsv))


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, rng) -> np.ndarray:
    """Where the marks colour goes, in the shape's own (rotated, unit-radius) coordinates."""
    u, v = u + rng.uniform(0, 1), v + rng.uniform(0, 1)  # random phase
    if kind == "stripes":
        return (v / 0.42) % 1 < 0.4
    if kind == "dots":
        return ((u / 0.5) % 1 - 0.5) ** 2 + ((v / 0.5) % 1 - 0.5) ** 2 < 0.32**2
    if kind == "checks":
        return (np.floor(u / 0.4) + np.floor(v / 0.4)) % 2 == 1
    return np.zeros(u.shape, bool)


def _clutter(draw, rng, n, size, colours) -> None:
    """Distractors: lines, small shapes and blobs in the palette colours or random ones."""
    for _ in range(n):
        colour = colours[rng.integers(len(colours))] if rng.random() < 0.6 else _random_colour(rng)
        kind = rng.integers(3)
        if kind == 0:
            x0, y0, x1, y1 = rng.uniform(-0.1, 1.1, 4) * size
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.uniform(0.01, 0.04) * size) + 1)
        elif kind == 1:
            angle, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.14) * size
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            points = _outline(SHAPES[rng.integers(len(SHAPES))]) @ rot.T * r + rng.uniform(0, 1, 2) * size
            draw.polygon([tuple(p) for p in points], fill=colour)
        else:
            x, y = rng.uniform(0, 1, 2) * size
            rx, ry = rng.uniform(0.03, 0.12, 2) * size
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)


def render_image(class_index: int, index: int, image_size: int = 96, seed: int = 0) -> Image.Image:
    """Image `index` of class `class_index`: an RGB image, the same for the same arguments."""
    shape, pattern, palette = CLASS_SPECS[class_index]
    rng = np.random.default_rng([seed, class_index, index])
    n = 2 * image_size  # draw at twice the size, then downsample (anti-aliasing)
    hue, light = rng.uniform(-0.02, 0.02), rng.uniform(0.75, 1.15)
    fill, marks = (_jitter(c, rng, hue, light) for c in PALETTES[palette])
    base_colours = [_jitter(c, rng, hue, light) for c in (_RED, _YELLOW, _BLUE)]

    # Background: a muted two-colour gradient, then clutter behind the object.
    c0, c1 = (np.array(_random_colour(rng, (0, 0.4), (0.25, 0.9)), float) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:16, 0:16] / 15 - 0.5  # linear, so drawn small and resized
    t = ((xs * np.cos(angle) + ys * np.sin(angle)) / 1.42 + 0.5)[..., None]
    gradient = Image.fromarray(np.clip(c0 + (c1 - c0) * t, 0, 255).astype(np.uint8))
    canvas = gradient.resize((n, n), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, int(rng.integers(3, 8)), n, base_colours)

    # The object: pose, scale, aspect and position; its pattern lives in its own coordinates.
    r, aspect = rng.uniform(0.22, 0.36) * n, rng.uniform(0.8, 1.25)
    cx, cy = rng.uniform(0.7 * r, n - 0.7 * r, 2)
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    local = _outline(shape) * [aspect, 1.0]
    points = [(cx + r * (cos * x - sin * y), cy + r * (sin * x + cos * y)) for x, y in local]
    mask = Image.new("L", (n, n), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    ys, xs = (g.astype(np.float32) + 0.5 for g in np.ogrid[0:n, 0:n])
    dx, dy = xs - cx, ys - cy
    u, v = (cos * dx + sin * dy) / r / aspect, (-sin * dx + cos * dy) / r
    marks_where = _pattern(pattern, u, v, rng)[..., None]
    layer = np.where(marks_where, np.uint8(marks), np.uint8(fill))
    canvas.paste(Image.fromarray(layer), (0, 0), mask)
    draw.line(points + points[:1], fill=marks, width=max(2, int(0.1 * r)), joint="curve")

    # In front of the object: a few more distractors and, often, an occluding patch.
    _clutter(draw, rng, int(rng.integers(0, 3)), n, base_colours)
    if rng.random() < 0.6:
        w, h = rng.uniform(0.25, 0.7, 2) * r
        x, y = np.array([cx, cy]) + rng.uniform(-0.9, 0.9, 2) * r
        draw.rectangle([x - w, y - h, x + w, y + h], fill=_random_colour(rng, (0, 0.6)))

    image = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    noise = rng.normal(0, rng.uniform(0, 6), (image_size, image_size, 3))
    return Image.fromarray(np.clip(np.asarray(image, float) + noise, 0, 255).round().astype(np.uint8))


def _manifest(num_classes, images_per_class, image_size, seed) -> dict:
    return {
        "format": FORMAT_VERSION,
        "generator": "metrix.datasets.synthetic",
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
        "classes": class_names(num_classes),
    }


def default_synthetic_root(
    num_classes: int = SYNTHETIC_DEFAULTS["num_classes"],
    images_per_class: int = SYNTHETIC_DEFAULTS["images_per_class"],
    image_size: int = SYNTHETIC_DEFAULTS["image_size"],
    seed: int = SYNTHETIC_DEFAULTS["seed"],
) -> Path:
    """$METRIX_CACHE (or ~/.cache/metrix) / synthetic-v<format>-<hash of the parameters>."""
    params = json.dumps(_manifest(num_classes, images_per_class, image_size, seed), sort_keys=True)
    return cache_root() / f"synthetic-v{FORMAT_VERSION}-{hashlib.sha256(params.encode()).hexdigest()[:12]}"


def _is_complete(root: Path, manifest: dict) -> bool:
    try:
        if json.loads((root / MANIFEST).read_text()) != manifest:
            return False
        expected = [f"{i:04d}.png" for i in range(manifest["images_per_class"])]
        return all(sorted(os.listdir(root / name)) == expected for name in manifest["classes"])
    except (OSError, ValueError):
        return False


def _write_class(out: Path, class_index: int, images_per_class: int, image_size: int, seed: int) -> None:
    folder = out / _name(class_index)
    folder.mkdir()
    for i in range(images_per_class):
        render_image(class_index, i, image_size, seed).save(
            folder / f"{i:04d}.png", format="PNG", compress_level=6, optimize=False
        )


def generate_synthetic(
    root,
    num_classes: int = SYNTHETIC_DEFAULTS["num_classes"],
    images_per_class: int = SYNTHETIC_DEFAULTS["images_per_class"],
    image_size: int = SYNTHETIC_DEFAULTS["image_size"],
    seed: int = SYNTHETIC_DEFAULTS["seed"],
    workers: int | None = None,
) -> Path:
    """Write root/<class>/<index:04d>.png and root/synthetic.json; return root.

    A complete dataset with the same parameters is kept as it is. Anything else that is ours
    (a different manifest, missing files) is replaced: the new dataset is written into a
    temporary sibling and renamed into place, so an interrupted run never looks complete.
    A non-empty folder that is not a synthetic dataset is refused, never deleted.
    """
    root = Path(root)
    if images_per_class < 1 or image_size < 16:
        raise ValueError(f"need images_per_class >= 1 and image_size >= 16, got {images_per_class}, {image_size}")
    manifest = _manifest(num_classes, images_per_class, image_size, seed)
    if _is_complete(root, manifest):
        return root
    if root.exists():
        ours = {MANIFEST, *class_names(len(CLASS_SPECS))}
        if not root.is_dir() or not set(os.listdir(root)) <= ours:
            raise FileExistsError(f"{root} exists and is not a Metrix synthetic dataset; not overwriting it")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        jobs = [(tmp, k, images_per_class, image_size, seed) for k in range(num_classes)]
        workers = min(workers or os.cpu_count() or 1, num_classes)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_class, *zip(*jobs)))
        else:
            for job in jobs:
                _write_class(*job)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks it complete
        if _is_complete(root, manifest):  # another process finished the same dataset meanwhile
            return root
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            root.rename(old / "data")
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
