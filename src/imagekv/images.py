"""Decode one image file into an RGB PIL image, or fail with an error that names the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Smaller images carry too few pixels for even the coarsest token grid (SigLIP's 14-px patches).
MIN_SIDE = 14


class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file."""


def load_rgb(path: str | Path, min_side: int = MIN_SIDE) -> Image.Image:
    """The fully decoded image at `path` in RGB mode.

    PIL decodes lazily, so the pixels are loaded here: a truncated file fails now, naming its path,
    rather than deep inside a model's processor.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ImageFileError(f"cannot decode image {path}: {error}") from error
    if min(rgb.size) < min_side:
        raise ImageFileError(f"image {path} is {rgb.width}x{rgb.height} px; both sides must be >= {min_side}")
    return rgb
