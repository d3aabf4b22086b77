"""Geometry of a token grid laid over the original image.

Every backbone reports its image tokens on a `rows x cols` grid of equal cells tiling a footprint,
a rectangle (x0, y0, x1, y1) in original-image pixels: the whole image (the squashed base view of
LLaVA, the fixed-size resize of Qwen2.5-VL, the SigLIP patch grid) unless the backbone says
otherwise. The anyres crops view of LLaVA says otherwise: unpadding keeps whole token rows, so its
map can reach a little past the image or stop a little short of it (imagekv.models.anyres). Token
(r, c) covers the pixel rectangle [x0 + c*w, x0 + (c+1)*w) x [y0 + r*h, y0 + (r+1)*h) with
w = (x1 - x0)/cols and h = (y1 - y0)/rows; what lies outside the image counts for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TokenGrid:
    rows: int
    cols: int
    height: int  # original image height in pixels
    width: int  # original image width in pixels
    footprint: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) px; None: the whole image

    def __post_init__(self):
        if self.footprint is not None:  # a list when read back from JSON
            x0, y0, x1, y1 = (float(edge) for edge in self.footprint)
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"token grid footprint {self.footprint} is not a rectangle (x0, y0, x1, y1)")
            whole = (x0, y0, x1, y1) == (0.0, 0.0, float(self.width), float(self.height))
            object.__setattr__(self, "footprint", None if whole else (x0, y0, x1, y1))

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in original-image px of the rectangle the cells tile."""
        return self.footprint if self.footprint is not None else (0.0, 0.0, float(self.width), float(self.height))

    @property
    def num_tokens(self) -> int:
        return self.rows * self.cols

    def to_json(self) -> list:
        """[rows, cols, height, width] and the footprint if any: `TokenGrid(*grid.to_json())` rebuilds it."""
        fields = [self.rows, self.cols, self.height, self.width]
        return fields if self.footprint is None else [*fields, list(self.footprint)]

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of a token's cell in original-image pixels."""
        xs, ys = self._edges(self.cols, 0), self._edges(self.rows, 1)
        return xs[col], ys[row], xs[col + 1], ys[row + 1]

    def cell_center(self, row: int, col: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.cell_box(row, col)
        return (x0 + x1) / 2, (y0 + y1) / 2

    def token_of_point(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the cell holding pixel coordinate (x, y), clamped to the grid."""
        x0, y0, x1, y1 = self.box
        col = int(np.floor((x - x0) * self.cols / (x1 - x0)))
        row = int(np.floor((y - y0) * self.rows / (y1 - y0)))
        return min(max(row, 0), self.rows - 1), min(max(col, 0), self.cols - 1)

    def centers(self) -> np.ndarray:
        """[rows*cols, 2] (x, y) centres of all cells in raster order."""
        xs, ys = self._edges(self.cols, 0), self._edges(self.rows, 1)
        gx, gy = np.meshgrid((xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def coverage(self, mask: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
        """Fraction of each cell's pixels where `mask` is true, as a [rows, cols] float array.

        Pixels where `ignore` is true (e.g. the VOC void label) count neither as foreground nor as
        cell area; a cell made only of ignored pixels (or lying outside the image) gets NaN.
        """
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask shape {mask.shape} does not match grid image size {(self.height, self.width)}")
        valid = np.ones_like(mask, dtype=bool) if ignore is None else ~ignore
        fg = np.asarray(mask, dtype=bool) & valid
        return _cell_sums(fg, self) / np.where(
            (area := _cell_sums(valid, self)) > 0, area, np.nan
        )

    def to_pixels(self, scores: torch.Tensor) -> torch.Tensor:
        """Bilinearly upsample [..., rows, cols] token scores to [..., height, width] pixels: each
        pixel centre read at its place in the footprint, token values at cell centres, held constant
        beyond the outer centres (as `F.interpolate(mode="bilinear", align_corners=False)`)."""
        lead = scores.shape[:-2]
        flat = scores.reshape(-1, self.rows, self.cols).float()
        down = _bilinear_weights(self.height, self.rows, *self.box[1::2]).to(flat.device)
        across = _bilinear_weights(self.width, self.cols, *self.box[0::2]).to(flat.device)
        return (down @ flat @ across.T).reshape(*lead, self.height, self.width)

    def _edges(self, cells: int, axis: int) -> np.ndarray:
        """The cells+1 cell edges along x (axis 0) or y (axis 1), in original-image px."""
        start, stop = self.box[axis], self.box[axis + 2]
        return start + np.arange(cells + 1) * ((stop - start) / cells)


def _bilinear_weights(pixels: int, cells: int, start: float, stop: float) -> torch.Tensor:
    """[pixels, cells] linear-interpolation weights along one axis, cells tiling [start, stop)."""
    source = ((torch.arange(pixels, dtype=torch.float64) + 0.5 - start) * (cells / (stop - start)) - 0.5)
    source = source.clamp(0, cells - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=cells - 1)
    frac = (source - low).float()
    weights = torch.zeros(pixels, cells)
    weights[torch.arange(pixels), low] += 1 - frac
    weights[torch.arange(pixels), high] += frac
    return weights


def _cell_sums(values: np.ndarray, grid: TokenGrid) -> np.ndarray:
    """Sum of `values` over each cell, with cell edges rounded to whole pixels and cut to the image."""
    row_edges = np.clip(np.round(grid._edges(grid.rows, 1)), 0, grid.height).astype(int)
    col_edges = np.clip(np.round(grid._edges(grid.cols, 0)), 0, grid.width).astype(int)
    # Sums between consecutive edges (np.add.reduceat; ~10x faster than an integral image, and it
    # runs once per support image of every few-shot episode). The zero row and column past the
    # image make every edge a valid index; a cell whose edges coincide (cut off) sums to zero.
    padded = np.zeros((grid.height + 1, grid.width + 1), dtype=np.int64)
    padded[:-1, :-1] = values
    sums = np.add.reduceat(np.add.reduceat(padded, row_edges, axis=0), col_edges, axis=1)[:-1, :-1]
    empty = (row_edges[1:] <= row_edges[:-1])[:, None] | (col_edges[1:] <= col_edges[:-1])[None, :]
    return np.where(empty, 0, sums).astype(np.float64)
