"""Decoding an image file robustly: EXIF orientation applied, any mode converted to RGB, a
pixel-count guard against decompression bombs, an optional region (box) of the picture, and one
clear error naming file and reason."""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps

#: Larger images are refused rather than decoded (about 13.4k x 13.4k): Pillow's own guard, which
#: refuses them inside Image.open (its warning band below this is not an error here).
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
ORIENTATION_TAG = 0x0112

#: A region of a picture: (x0, y0, x1, y1) in pixels of the image as displayed (EXIF orientation
#: applied), x1 and y1 exclusive, as PIL's crop takes them.
Box = tuple[float, float, float, float]


class ImageDecodeError(ValueError):
    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def open_rgb(path: Path | str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    return decode_rgb(path, max_pixels=max_pixels)[0]


def parse_box(text: str) -> Box:
    """ "x0,y0,x1,y1" -> a Box; ValueError in one line for anything else."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        x0, y0, x1, y1 = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"box {text!r}: expected x0,y0,x1,y1 in pixels, e.g. 10,20,200,180") from None
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {text!r}: x1 must be greater than x0 and y1 greater than y0")
    return x0, y0, x1, y1


def format_box(box: Box) -> str:
    return ",".join(f"{v:g}" for v in box)


def decode_rgb(
    path: Path | str,
    data: bytes | None = None,
    max_pixels: int = MAX_PIXELS,
    min_short_side: int | None = None,
    box: Box | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image, (width, height) of the full image as displayed). `data`: the file's bytes,
    already read (`path` then only names it in errors). `min_short_side`: a JPEG at least four
    times that size is decoded at a reduced DCT scale (Pillow's draft) that keeps its short side
    >= 2 x min_short_side: several times faster for camera photos, and the antialiased resize
    that follows still has twice the pixels it needs. `box`: only that region of the picture is
    returned (clipped to the picture; one that misses it is an error), and the draft keeps the
    region's short side, not the picture's, at 2 x min_short_side."""
    if data is None:
        path = Path(path)  # else a name only, which may be a URL (a Path would fold its "//")
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise ImageDecodeError(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageDecodeError(path, too_many_pixels(f"{image.width}x{image.height}", max_pixels))
                size = image.size
                if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8):
                    size = size[::-1]
                region = _clip(path, box, size) if box is not None else (0, 0, *size)
                if min_short_side and box is not None:
                    min_short_side = math.ceil(
                        min_short_side * min(size) / min(region[2] - region[0], region[3] - region[1])
                    )
                if min_short_side and image.format == "JPEG" and min(image.size) >= 4 * min_short_side:
                    factor = 2 * min_short_side / min(image.size)
                    image.draft("RGB", (math.ceil(image.width * factor), math.ceil(image.height * factor)))
                image = ImageOps.exif_transpose(image)
                if box is not None:  # the region, in the (possibly drafted) pixels decoded
                    sx, sy = image.width / size[0], image.height / size[1]
                    image = image.crop(
                        (
                            round(region[0] * sx),
                            round(region[1] * sy),
                            max(round(region[2] * sx), round(region[0] * sx) + 1),
                            max(round(region[3] * sy), round(region[1] * sy) + 1),
                        )
                    )
                return _to_rgb(image), size
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "the image"
        raise ImageDecodeError(path, too_many_pixels(size, min(max_pixels, MAX_PIXELS))) from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(
            path, f"cannot decode ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None


def too_many_pixels(size: str, limit: int) -> str:
    return f"{size} exceeds the {limit:,}-pixel limit (refused undecoded, as a decompression-bomb guard)"


def _clip(path, box: Box, size: tuple[int, int]) -> Box:
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], size[0]), min(box[3], size[1])
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ImageDecodeError(path, f"box {format_box(box)} lies outside the {size[0]}x{size[1]} picture")
    return x0, y0, x1, y1


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    image.load()
    return image.convert("RGB")
