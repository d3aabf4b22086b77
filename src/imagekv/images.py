"""Decode one image file into an RGB PIL image, or fail with an error that names the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Smaller images carry too few pixels for even the coarsest token grid (SigLIP's 14-px patches).
MIN_SIDE = 14
# Pixel budget of one decoded image (config key extraction.max_image_pixels): 40 megapixels take
# about 120 MB as 8-bit RGB, and the datasets' largest images have a few. Pillow refuses images
# beyond 2 * Image.MAX_IMAGE_PIXELS (about 179 megapixels) whatever this says.
MAX_PIXELS = 40_000_000
# Integer modes Pillow gives 16-bit samples in (16-bit PNG and TIFF); "RGB" conversion would clip them to 255.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file."""


def load_rgb(path: str | Path, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The fully decoded image at `path` in RGB mode, 8 bits per channel.

    PIL decodes lazily, so the pixels are loaded here: a truncated file fails now, naming its path,
    rather than deep inside a model's processor. The size is checked before decoding.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageFileError(
                        f"image {path} is {image.width}x{image.height} px = {image.width * image.height} pixels, "
                        f"more than the {max_pixels} of config key extraction.max_image_pixels"
                    )
                image.load()
                rgb = _to_rgb(image, path)
    except ImageFileError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageFileError(f"image {path} is too large for Pillow to decode safely: {error}") from error
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:  # ValueError: no conversion
        raise ImageFileError(f"cannot decode image {path}: {error}") from error
    if min(rgb.size) < min_side:
        raise ImageFileError(f"image {path} is {rgb.width}x{rgb.height} px; both sides must be >= {min_side}")
    return rgb


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """16-bit samples are scaled to 8 bits (v / 257, rounded: 65535 -> 255), not clipped."""
    if image.mode in SIXTEEN_BIT_MODES:
        samples = np.asarray(image, dtype=np.int64)
        if samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise ImageFileError(
                f"image {path} holds samples outside 0..65535 (mode {image.mode}); expected 8 or 16 bits"
            )
        return Image.fromarray(np.rint(samples / 257).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise ImageFileError(f"image {path} holds floating-point samples (mode F); expected 8- or 16-bit integers")
    return image.convert("RGB")
