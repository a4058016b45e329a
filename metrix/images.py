"""Decoding an image file robustly: EXIF orientation applied, any mode converted to RGB, a
pixel-count guard against decompression bombs, and one clear error naming file and reason."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

from PIL import Image, ImageOps

#: Larger images are refused rather than decoded (about 16k x 16k).
MAX_PIXELS = 256_000_000
ORIENTATION_TAG = 0x0112


class ImageDecodeError(ValueError):
    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def open_rgb(path: Path | str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    return decode_rgb(path, max_pixels=max_pixels)[0]


def decode_rgb(path: Path | str, data: bytes | None = None, max_pixels: int = MAX_PIXELS,
               min_short_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image, (width, height) of the full image as displayed). `data`: the file's bytes,
    already read (`path` then only names it in errors). `min_short_side`: a JPEG at least four
    times that size is decoded at a reduced DCT scale (Pillow's draft) that keeps its short side
    >= 2 x min_short_side: several times faster for camera photos, and the antialiased resize
    that follows still has twice the pixels it needs."""
    if data is None:
        path = Path(path)  # else a name only, which may be a URL (a Path would fold its "//")
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise ImageDecodeError(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageDecodeError(path, f"{image.width}x{image.height} exceeds the {max_pixels:,}-pixel limit")
                size = image.size
                if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8):
                    size = size[::-1]
                if min_short_side and image.format == "JPEG" and min(image.size) >= 4 * min_short_side:
                    factor = 2 * min_short_side / min(image.size)
                    image.draft("RGB", (math.ceil(image.width * factor), math.ceil(image.height * factor)))
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image), size
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(path, f"refused as a decompression bomb ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(path, f"cannot decode ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None


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
