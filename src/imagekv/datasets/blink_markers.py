"""The point markers of BLINK's correspondence subtasks: drawing them as the publisher does, and
finding them again in an image.

What is read: BLINK ships no point coordinates (the hub dataset's columns are idx, question,
sub_task, image_1..image_4, choices, answer, prompt, explanation; see imagekv.datasets.blink). The
points exist only as drawings, which the published prompts of Visual_, Semantic_ and
Functional_Correspondence describe: "A point is circled on the first image, labeled with REF ...
You are given multiple red-circled points on the second image, choices of "A, B, C, D" are drawn
beside each circle" (the hub's `prompt` column, as quoted by public BLINK users), with the choices
"Point A" .. "Point D" (zeyofu/BLINK_Benchmark eval/saved_outputs/GPT4o/Visual_Correspondence.json:
"The point labeled "REF" in the first image corresponds to ... (D) Point D").

What is inferred: the pixel details (a red ring of about 3 % of the shorter side, its label in the
same red at its upper right). The locator relies only on what the prompts state: red rings, one
label beside each.

Locating (SPEC E6): saturated red pixels are split into connected parts; a part whose pixels lie at
one distance from their centre all around it is a ring; every other red part near a ring is a piece
of that ring's label. A label is read by matching its pixels, cropped and scaled to a square, with
the glyphs of the candidate letters; rings and letters are paired one to one (Hungarian).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

MARKER_RGB = (255, 0, 0)
REFERENCE_LABEL = "REF"
CANDIDATE_LABELS = ("A", "B", "C", "D")
RING_FRACTION = 0.03  # ring radius / shorter image side [I]
MIN_RING_RADIUS = 8  # px: smaller rings and JPEG-blurred letters become hard to tell apart
MIN_RING_PIXELS = 8  # smaller red specks are JPEG noise or bits of a letter
GLYPH_SIDE = 24  # labels and glyphs are compared as GLYPH_SIDE x GLYPH_SIDE masks
ANGLE_BINS = 24  # a ring has pixels in every 15-degree sector around its centre (a "C" has not)
MAX_OFF_RING = 0.02  # fraction of a ring's pixels farther than half its stroke from its radius
MAX_ASPECT_GAP = 0.1  # |width - height| / size of a ring's box (letters are taller than wide)
LABEL_REACH = 4.0  # a label piece belongs to a ring within this many ring radii


class Marker(NamedTuple):
    x: float  # centre, in image pixels
    y: float
    radius: float


class MarkerError(ValueError):
    """The drawn markers cannot be found as expected; the message says what was found."""


def ring_radius(size: tuple[int, int]) -> int:
    """Radius in pixels of the marker ring for an image of (height, width)."""
    return max(MIN_RING_RADIUS, round(RING_FRACTION * min(size)))


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def label_size(label: str, radius: int) -> tuple[int, int]:
    """(width, height) in pixels of a drawn label."""
    left, top, right, bottom = _font(3 * radius).getbbox(label)
    return right - left, bottom - top


def draw_marker(image: Image.Image, point: tuple[float, float], label: str) -> None:
    """Circle `point` (x, y) in red and write `label` beside the circle, at its upper right (at its
    upper left when the label would leave the image)."""
    radius = ring_radius((image.height, image.width))
    x, y = point
    draw = ImageDraw.Draw(image)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=MARKER_RGB, width=max(3, radius // 3))
    font = _font(3 * radius)
    left, top, right, bottom = font.getbbox(label)
    text_x = x + radius + 1 if x + radius + 1 + right <= image.width else x - radius - 1 - right
    text_y = max(0, y - radius - bottom)
    draw.text((text_x - left, text_y), label, fill=MARKER_RGB, font=font)


def marker_footprint(size: tuple[int, int], label: str) -> float:
    """How far from its point a drawn marker reaches: points closer than twice this to each other or
    to the border would let markers touch or be cut."""
    radius = ring_radius(size)
    width, height = label_size(label, radius)
    return radius + 1 + max(width, height)


def red_mask(pixels: np.ndarray) -> np.ndarray:
    """Pixels of the marker red, with room for JPEG's colour shifts."""
    rgb = pixels.astype(np.int16)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    other = np.maximum(green, blue)
    return (red >= 150) & (other <= 110) & (red - other >= 100)


def _ring(ys: np.ndarray, xs: np.ndarray) -> Marker | None:
    """The ring when the pixels form a ring around their centre, else None: a square box,
    pixels in every sector around the centre, and (almost) all of them within half the stroke of one
    radius (the corners and flat sides of a "D" or "B" are not)."""
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    if abs(width - height) > MAX_ASPECT_GAP * max(width, height):
        return None
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    distance = np.hypot(xs - cx, ys - cy)
    radius = float(np.median(distance))
    if radius < MIN_RING_RADIUS / 2:
        return None
    stroke = len(ys) / (2 * np.pi * radius)
    if (np.abs(distance - radius) > stroke / 2 + 1).mean() > MAX_OFF_RING:
        return None
    angles = ((np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi) * ANGLE_BINS).astype(int) % ANGLE_BINS
    if len(np.unique(angles)) < ANGLE_BINS:
        return None
    return Marker(float(cx), float(cy), radius)


@lru_cache(maxsize=None)
def _glyph(label: str) -> np.ndarray:
    image = Image.new("L", (8 * GLYPH_SIDE, 4 * GLYPH_SIDE))
    ImageDraw.Draw(image).text((4, 4), label, fill=255, font=_font(3 * GLYPH_SIDE))
    return _square(np.array(image) > 127)


def _square(mask: np.ndarray) -> np.ndarray:
    """A binary mask cropped to its pixels and scaled to GLYPH_SIDE x GLYPH_SIDE (float)."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scaled = Image.fromarray(crop.astype(np.uint8) * 255).resize((GLYPH_SIDE, GLYPH_SIDE), Image.BILINEAR)
    return np.asarray(scaled, dtype=np.float64) / 255


def locate_markers(pixels: np.ndarray, labels: tuple[str, ...]) -> dict[str, Marker]:
    """Each labelled marker of an [H, W, 3] image.

    One label: the single ring of the image (its label is not read). Several: as many rings as
    labels, each named by the label drawn beside it. Raises MarkerError when the rings or labels
    found do not match.
    """
    parts, count = ndimage.label(red_mask(pixels), structure=np.ones((3, 3)))
    rings, pieces = [], []
    for index, (rows, cols) in enumerate(ndimage.find_objects(parts), start=1):
        ys, xs = np.nonzero(parts[rows, cols] == index)
        ys, xs = ys + rows.start, xs + cols.start
        ring = _ring(ys, xs) if len(ys) >= MIN_RING_PIXELS else None
        (rings if ring else pieces).append(ring or (ys, xs))
    if len(rings) != len(labels):
        raise MarkerError(f"found {len(rings)} red ring(s), expected {len(labels)} (labels {', '.join(labels)})")
    if len(labels) == 1:
        return {labels[0]: rings[0]}
    owned = [np.zeros(pixels.shape[:2], dtype=bool) for _ in rings]
    for ys, xs in pieces:
        distances = [np.hypot(xs.mean() - x, ys.mean() - y) / r for x, y, r in rings]
        nearest = int(np.argmin(distances))
        if distances[nearest] <= LABEL_REACH:
            owned[nearest][ys, xs] = True
    if not all(mask.any() for mask in owned):
        raise MarkerError(f"{sum(not m.any() for m in owned)} of {len(rings)} rings have no label beside them")
    cost = np.array([[np.abs(_square(mask) - _glyph(label)).mean() for label in labels] for mask in owned])
    ring_of, label_of = linear_sum_assignment(cost)
    return {labels[j]: rings[i] for i, j in zip(ring_of, label_of)}
