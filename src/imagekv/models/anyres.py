"""Where LLaVA-NeXT and LLaVA-OneVision put an image's high-resolution ("anyres") tokens.

Our own account of what transformers 5.23 does (read in models/llava_next and models/llava_onevision:
the image processors' best-canvas choice, aspect-keeping resize and centred padding; the models'
`pack_image_features`: crops tiled into one token map, `unpad_image`, OneVision's `anyres_max_N`
downsampling, one newline token after each row). Everything here is arithmetic on the image size
and the model config; tests/test_anyres.py checks it against the models' own packing and the image
processors' own canvas.

Geometry, for an H x W image:
- canvas: the pinpoint (h, w) that keeps the most image pixels after an aspect-keeping downscale
  (capped at the image's own pixel count), then the one wasting the least area, the first on ties.
- the image is resized to fill the canvas along its limiting side and centred along the other;
  the canvas is cut into crops of `crop` px, each read as `side x side` tokens (side = crop // patch),
  tiled into one map of (canvas_h // crop * side) x (canvas_w // crop * side) tokens.
- unpadding drops the same number of token rows (or columns) from both ends of the padded side:
  half of what exceeds the image's own extent there, rounded down, so one padded row may stay.
- OneVision (`anyres_max_N`): a map of more than about N crops' worth of tokens (ratio > 1.1) is
  bilinearly resized to floor(rows / ratio) x floor(cols / ratio) over the same extent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# OneVision's resize trigger: the map's token count over N crops' worth, square-rooted, above this.
_DOWNSAMPLE_ABOVE = 1.1


@dataclass(frozen=True)
class AnyresGeometry:
    crop: int  # px per crop side (the vision tower's image_size)
    patch: int  # px per token side within a crop
    pinpoints: tuple[tuple[int, int], ...]  # candidate canvases, (height, width) px
    max_crops: int | None = None  # OneVision's anyres_max_N; None: the map is never resized

    @classmethod
    def from_config(cls, config) -> "AnyresGeometry":
        """The geometry a LlavaNextConfig or LlavaOnevisionConfig describes."""
        vision = config.vision_config
        aspect = getattr(config, "vision_aspect_ratio", None)  # OneVision only
        max_crops = None
        if aspect is not None:
            match = re.fullmatch(r"anyres_max_(\d+)", aspect)
            if match is None:
                raise ValueError(f"model config key 'vision_aspect_ratio' must be 'anyres_max_<N>', got {aspect!r}")
            max_crops = int(match.group(1))
        pinpoints = tuple((int(h), int(w)) for h, w in config.image_grid_pinpoints)
        return cls(vision.image_size, vision.patch_size, pinpoints, max_crops)

    @property
    def side(self) -> int:
        """Tokens per crop side."""
        return self.crop // self.patch

    def canvas(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) px of the pinpoint the image is resized and padded into."""

        def fit(pinpoint: tuple[int, int]) -> tuple[int, int]:
            canvas_h, canvas_w = pinpoint
            scale = min(canvas_w / width, canvas_h / height)
            kept = min(int(width * scale) * int(height * scale), width * height)
            return kept, -(canvas_h * canvas_w - kept)

        return max(self.pinpoints, key=fit)  # max keeps the first of equals

    def padded_map(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the crops' tokens tiled over the whole canvas, padding included."""
        canvas_h, canvas_w = self.canvas(height, width)
        return canvas_h // self.crop * self.side, canvas_w // self.crop * self.side

    def unpadded_span(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Token rows [r0, r1) and columns [c0, c1) of the padded map kept by unpadding."""
        rows, cols = self.padded_map(height, width)
        if width * rows > cols * height:  # wider than the map: padded above and below
            cut = (rows - height * cols // width) // 2
            return (cut, rows - cut), (0, cols)
        cut = (cols - width * rows // height) // 2
        return (0, rows), (cut, cols - cut)

    def crop_map_shape(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the crops view as the LM receives it (each row then one newline token)."""
        (r0, r1), (c0, c1) = self.unpadded_span(height, width)
        rows, cols = r1 - r0, c1 - c0
        if self.max_crops is None:
            return rows, cols
        ratio = math.sqrt(rows * cols / (self.max_crops * self.side**2))
        if ratio > _DOWNSAMPLE_ABOVE:
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    def base_footprint(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in original-image px that the base view's tokens read: the image is
        squashed to one crop, whose last crop - side * patch px (6 of SigLIP's 384) no token reads."""
        read = self.side * self.patch / self.crop
        return 0.0, 0.0, width * read, height * read

    def crop_map_footprint(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in original-image px of what the crops view's tokens read: the kept
        tokens' extent on the canvas, mapped back through the centring and the resize. It can
        reach a little past the image (a padded row kept) or stop short of it (a partial edge
        row dropped, or the last crop's px beyond side * patch, which no token reads). Within it
        the cells are taken as equal: where crop - side * patch > 0 (OneVision: 6 px per 384 px
        crop) the tokens of each crop sit up to that many canvas px closer together than that."""
        canvas_h, canvas_w = self.canvas(height, width)
        (r0, r1), (c0, c1) = self.unpadded_span(height, width)
        (y0, y1), (x0, x1) = self._token_extent(r0, r1), self._token_extent(c0, c1)
        resized_h, resized_w = self.resized(height, width)
        top, left = (canvas_h - resized_h) // 2, (canvas_w - resized_w) // 2
        sy, sx = height / resized_h, width / resized_w
        return (x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx, (y1 - top) * sy

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) px of the image resized into its canvas, aspect kept, rounded up."""
        canvas_h, canvas_w = self.canvas(height, width)
        if canvas_w / width < canvas_h / height:
            return min(math.ceil(height * (canvas_w / width)), canvas_h), canvas_w
        return canvas_h, min(math.ceil(width * (canvas_h / height)), canvas_w)

    def _token_extent(self, first: int, stop: int) -> tuple[int, int]:
        """Canvas px from the start of token `first` to the end of token `stop - 1` along one axis."""

        def start(token: int) -> int:
            return token // self.side * self.crop + token % self.side * self.patch

        return start(first), start(stop - 1) + self.patch
