"""Reading dataset files with errors that name the offending file, and seeded fixed subsets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")


class DatasetFileError(ValueError):
    """A dataset file is missing, unreadable or does not hold what its layout promises."""


def require(path: Path) -> Path:
    if not path.exists():
        raise DatasetFileError(f"missing dataset file: {path}")
    return path


def read_json(path: Path) -> Any:
    try:
        with open(require(path), encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFileError(f"corrupt JSON in {path}: {error}") from error


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split or list file."""
    return [line.strip() for line in require(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_png_array(path: Path) -> np.ndarray:
    """The raw pixel array of a PNG: palette indices for mode P, grey levels for L, [H, W, 3] for RGB."""
    try:
        with Image.open(require(path)) as image:
            if image.format != "PNG":
                raise DatasetFileError(f"{path} is {image.format}, expected a PNG annotation")
            array = np.array(image.convert("RGB") if image.mode in ("RGBA", "LA") else image)
    except (OSError, SyntaxError) as error:  # PIL reports truncated or garbled files this way
        raise DatasetFileError(f"corrupt annotation image {path}: {error}") from error
    return array


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel label PNG (palette or grey) as a uint8 [H, W] array of label indices."""
    array = read_png_array(path)
    if array.ndim != 2:
        raise DatasetFileError(f"{path} has {array.shape[-1]} channels, expected a palette or grey label PNG")
    return array.astype(np.uint8)


def read_grey(path: Path) -> np.ndarray:
    """Any image file (PNG, BMP, ...) as uint8 grey levels [H, W]; bilevel images become 0 / 255."""
    try:
        with Image.open(require(path)) as image:
            return np.array(image.convert("L"))
    except (OSError, SyntaxError) as error:
        raise DatasetFileError(f"corrupt annotation image {path}: {error}") from error


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) read from the image header."""
    try:
        with Image.open(require(path)) as image:
            width, height = image.size
    except OSError as error:
        raise DatasetFileError(f"unreadable image {path}: {error}") from error
    return height, width


def check_same_size(annotation: Path, array: np.ndarray, image: Path) -> None:
    """An annotation must cover its image pixel for pixel: a different size is an error naming both."""
    height, width = image_size(image)
    if array.shape[:2] != (height, width):
        raise DatasetFileError(
            f"{annotation} is {array.shape[1]}x{array.shape[0]} pixels but its image {image} is {width}x{height}"
        )


def seeded_subset(items: Sequence[T], count: int | None, seed: int) -> list[T]:
    """`count` items drawn without replacement by `seed`, kept in their original order (all if None)."""
    if count is None or count >= len(items):
        return list(items)
    chosen = np.random.default_rng(seed).choice(len(items), size=count, replace=False)
    return [items[i] for i in sorted(chosen.tolist())]
