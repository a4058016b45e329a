"""Decoding an image file robustly: EXIF orientation applied, any mode converted to RGB, a
pixel-count guard against decompression bombs, and one clear error naming file and reason."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps

#: Larger images are refused rather than decoded (about 16k x 16k).
MAX_PIXELS = 256_000_000


class ImageDecodeError(ValueError):
    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def open_rgb(path: Path | str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageDecodeError(path, f"{image.width}x{image.height} exceeds the {max_pixels:,}-pixel limit")
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
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
