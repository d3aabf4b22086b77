"""Geometry of a token grid laid over the original image.

Every backbone reports its image tokens on a `rows x cols` grid of equal cells covering the whole
original image (the squashed base view of LLaVA, the fixed-size resize of Qwen2.5-VL, the SigLIP
patch grid). Token (r, c) covers the pixel rectangle
[c*W/cols, (c+1)*W/cols) x [r*H/rows, (r+1)*H/rows) of the original H x W image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenGrid:
    rows: int
    cols: int
    height: int  # original image height in pixels
    width: int  # original image width in pixels

    @property
    def num_tokens(self) -> int:
        return self.rows * self.cols

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of a token's cell in original-image pixels."""
        cw, ch = self.width / self.cols, self.height / self.rows
        return col * cw, row * ch, (col + 1) * cw, (row + 1) * ch

    def cell_center(self, row: int, col: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.cell_box(row, col)
        return (x0 + x1) / 2, (y0 + y1) / 2

    def token_of_point(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the cell holding pixel coordinate (x, y), clamped to the grid."""
        col = int(np.floor(x * self.cols / self.width))
        row = int(np.floor(y * self.rows / self.height))
        return min(max(row, 0), self.rows - 1), min(max(col, 0), self.cols - 1)

    def centers(self) -> np.ndarray:
        """[rows*cols, 2] (x, y) centres of all cells in raster order."""
        xs = (np.arange(self.cols) + 0.5) * self.width / self.cols
        ys = (np.arange(self.rows) + 0.5) * self.height / self.rows
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def coverage(self, mask: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
        """Fraction of each cell's pixels where `mask` is true, as a [rows, cols] float array.

        Pixels where `ignore` is true (e.g. the VOC void label) count neither as foreground nor as
        cell area; a cell made only of ignored pixels gets NaN.
        """
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask shape {mask.shape} does not match grid image size {(self.height, self.width)}")
        valid = np.ones_like(mask, dtype=bool) if ignore is None else ~ignore
        fg = np.asarray(mask, dtype=bool) & valid
        return _cell_sums(fg, self) / np.where(
            (area := _cell_sums(valid, self)) > 0, area, np.nan
        )

    def to_pixels(self, scores: torch.Tensor) -> torch.Tensor:
        """Bilinearly upsample [..., rows, cols] token scores to [..., height, width] pixels."""
        lead = scores.shape[:-2]
        flat = scores.reshape(-1, 1, self.rows, self.cols).float()
        up = F.interpolate(flat, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return up.reshape(*lead, self.height, self.width)


def _cell_sums(values: np.ndarray, grid: TokenGrid) -> np.ndarray:
    """Sum of `values` over each cell, with cell edges rounded to whole pixels."""
    row_edges = np.round(np.arange(grid.rows + 1) * grid.height / grid.rows).astype(int)
    col_edges = np.round(np.arange(grid.cols + 1) * grid.width / grid.cols).astype(int)
    integral = np.zeros((grid.height + 1, grid.width + 1), dtype=np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(values.astype(np.float64), axis=0), axis=1)
    r0, r1 = row_edges[:-1, None], row_edges[1:, None]
    c0, c1 = col_edges[None, :-1], col_edges[None, 1:]
    return integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
