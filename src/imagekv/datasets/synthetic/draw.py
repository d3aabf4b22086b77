"""Drawing primitives of the synthetic twins: textured shapes with exact masks on a noisy backdrop.

Every class has its own shape, colour and texture (`class_style`), so that any reasonable feature
extractor can tell classes apart; masks come from the same geometry that paints the pixels, so they
are exact. Everything is a pure function of its arguments and the numpy Generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "hexagon", "bar")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "purple": (120, 50, 170),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots", "diagonal")
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Style:
    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def class_style(index: int) -> Style:
    """A distinct (shape, colour) pair for each index below 40 (lcm of 8 shapes and 10 colours)."""
    colours = list(COLOURS)
    return Style(SHAPES[index % len(SHAPES)], colours[index % len(colours)], TEXTURES[index % len(TEXTURES)])


def shape_mask(shape: str, size: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean [H, W] mask of `shape` centred at (x, y) with half-extent `radius` pixels."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = (xs + 0.5 - center[0]) / radius, (ys + 0.5 - center[1]) / radius
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u**2 + v**2 <= 1
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "triangle":
        return (v <= 0.8) & (v >= -1 + 1.8 * au)
    if shape == "diamond":
        return au + av <= 1
    if shape == "cross":
        return ((au <= 0.35) & (av <= 1)) | ((av <= 0.35) & (au <= 1))
    if shape == "ring":
        return (u**2 + v**2 <= 1) & (u**2 + v**2 >= 0.3)
    if shape == "hexagon":
        return np.maximum(au * 0.866 + av * 0.5, av) <= 0.9
    if shape == "bar":
        return (au <= 1) & (av <= 0.45)
    raise ValueError(f"unknown synthetic shape {shape!r}")


def _rectangle(half_u: float, half_v: float) -> list[tuple[float, float]]:
    return [(-half_u, -half_v), (half_u, -half_v), (half_u, half_v), (-half_u, half_v)]


def _arc(radius: float, start: float, stop: float, steps: int) -> list[tuple[float, float]]:
    angles = np.linspace(start, stop, steps + 1)
    return [(radius * float(np.cos(a)), radius * float(np.sin(a))) for a in angles]


HEXAGON_HALF_TOP, HEXAGON_HALF_WIDTH = (0.9 - 0.45) / 0.866, 0.9 / 0.866
RING_INNER = 0.3**0.5
# The outlines of SHAPES in units of the radius, (u, v) with v pointing down: the same figures as
# shape_mask, as COCO polygons (a ring as sector quads, a cross as two bars: COCO merges them).
UNIT_POLYGONS = {
    "circle": [_arc(1.0, 0, 2 * np.pi, 32)[:-1]],
    "square": [_rectangle(0.85, 0.85)],
    "triangle": [[(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]],
    "diamond": [[(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]],
    "cross": [_rectangle(1.0, 0.35), _rectangle(0.35, 1.0)],
    "ring": [
        _arc(1.0, a, a + np.pi / 8, 2) + _arc(RING_INNER, a + np.pi / 8, a, 2)
        for a in np.arange(16) * np.pi / 8
    ],
    "hexagon": [
        [
            (HEXAGON_HALF_TOP, -0.9),
            (HEXAGON_HALF_WIDTH, 0.0),
            (HEXAGON_HALF_TOP, 0.9),
            (-HEXAGON_HALF_TOP, 0.9),
            (-HEXAGON_HALF_WIDTH, 0.0),
            (-HEXAGON_HALF_TOP, -0.9),
        ]
    ],
    "bar": [_rectangle(1.0, 0.45)],
}


def shape_polygons(shape: str, center: tuple[float, float], radius: float) -> list[list[float]]:
    """COCO polygons [[x0, y0, x1, y1, ...], ...] of `shape` centred at (x, y), rounded to 0.01 px
    as COCO stores them."""
    return [
        [round(c, 2) for u, v in outline for c in (center[0] + u * radius, center[1] + v * radius)]
        for outline in UNIT_POLYGONS[shape]
    ]


def texture_pattern(texture: str, size: tuple[int, int], period: int = 6) -> np.ndarray:
    """Boolean [H, W] pattern: True where the texture shows its full colour, False its dark shade."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    half = period // 2
    patterns = {
        "solid": np.ones(size, dtype=bool),
        "hstripes": (ys % period) < half,
        "vstripes": (xs % period) < half,
        "checker": ((xs // half) + (ys // half)) % 2 == 0,
        "dots": ((xs % period) - half) ** 2 + ((ys % period) - half) ** 2 > 2,
        "diagonal": ((xs + ys) % period) < half,
    }
    if texture not in patterns:
        raise ValueError(f"unknown synthetic texture {texture!r}")
    return patterns[texture]


def backdrop(rng: np.random.Generator, size: tuple[int, int], tone: int = 120) -> np.ndarray:
    """A smooth greyish [H, W, 3] uint8 background: low-resolution noise upsampled bilinearly."""
    coarse = rng.integers(tone - 40, tone + 40, size=(6, 6, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((size[1], size[0]), Image.BILINEAR))


def paint(canvas: np.ndarray, mask: np.ndarray, style: Style) -> None:
    """Paint `style`'s textured colour into `canvas` where `mask` is true."""
    rgb = np.array(COLOURS[style.colour], dtype=np.float64)
    pattern = texture_pattern(style.texture, mask.shape)
    shade = np.where(pattern[..., None], rgb, rgb * 0.55)
    canvas[mask] = shade[mask].astype(np.uint8)


def random_size(rng: np.random.Generator, cfg: dict) -> tuple[int, int]:
    """(height, width) drawn from `image_size: [min, max]` (default 96..160 pixels)."""
    low, high = cfg.get("image_size", [96, 160])
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def save_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=JPEG_QUALITY)


def save_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """Save a label or RGB PNG; a palette turns a uint8 index array into a mode-P PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is None:
        image = Image.fromarray(array)
    else:  # build mode P from the raw bytes: converting from L would remap the indices
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array, np.uint8).tobytes())
        image.putpalette(palette)
    image.save(path, format="PNG")


def voc_palette() -> list[int]:
    """The 256-entry PASCAL VOC colour map (also used by DAVIS): bits of the index spread over RGB."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette


@dataclass(frozen=True)
class Placement:
    """One object of a scene: its style and where it sits (centre (x, y), half-extent in pixels)."""

    style: Style
    center: tuple[float, float]
    radius: float


def render(
    rng: np.random.Generator, size: tuple[int, int], objects: list[Placement], tone: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [H, W, 3] and the visible-instance map [H, W] (0 = backdrop, i+1 = objects[i]).

    Later objects occlude earlier ones, and the instance map records exactly what is visible.
    """
    pixels = backdrop(rng, size, tone)
    instances = np.zeros(size, dtype=np.uint8)
    for index, placed in enumerate(objects):
        mask = shape_mask(placed.style.shape, size, placed.center, placed.radius)
        paint(pixels, mask, placed.style)
        instances[mask] = index + 1
    return pixels, instances


def random_placement(
    rng: np.random.Generator, style: Style, size: tuple[int, int], scale: tuple[float, float] = (0.18, 0.3)
) -> Placement:
    """A placement whose half-extent is a `scale` fraction of the shorter side, fully inside the image."""
    height, width = size
    radius = float(rng.uniform(*scale)) * min(height, width)
    center = (float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius)))
    return Placement(style, center, radius)
