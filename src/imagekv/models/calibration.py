"""Calibration backbones that bracket every probe: `oracle` (near the maximum) and `noise` (chance).

Both need to know which dataset image they are encoding, not only its pixels, so they implement
`encode_with_ids`; plain `encode` refuses. Their features form one layer on a fixed `grid` of
equal cells over the original image.

- oracle: token feature = the fraction of the token's cell covered by each ground-truth id of the
  dataset's `oracle_truth(image_id)`, then for keypoint datasets one channel per id that is a
  Gaussian of the distance from the cell centre to that id's keypoint (sigma = one cell), plus
  optional seeded noise; a text is the indicator of the id it names.
- noise: seeded standard Gaussian features, a pure function of the image id (or text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from imagekv.grid import TokenGrid
from imagekv.models.base import Backbone, BackboneOutput
from imagekv.models.registry import register

DEFAULT_GRID = (16, 16)
DEFAULT_NOISE_WIDTH = 64


def seeded_gaussian(shape: Sequence[int], seed: int, key: str) -> torch.Tensor:
    """Standard normal float32 tensor determined by (seed, key) alone.

    Seeded from SHA-256, not `hash()`, which Python salts per process.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randn(*shape, generator=generator)


class _Calibration(Backbone):
    num_layers = 1

    def __init__(self, cfg: dict):
        grid = cfg.get("grid", DEFAULT_GRID)
        if len(grid) != 2 or not all(isinstance(n, int) and n > 0 for n in grid):
            raise ValueError(f"{self.name} config key 'grid' must be [rows, cols] of positive ints, got {grid!r}")
        self.rows, self.cols = grid
        self.seed = int(cfg.get("seed", 0))

    def encode(
        self, images: Sequence[Image.Image], prefix: str = "", layers: Sequence[int] | None = None
    ) -> list[BackboneOutput]:
        raise TypeError(f"the {self.name} backbone needs image ids: call encode_with_ids")

    def encode_with_ids(
        self,
        images: Sequence[Image.Image],
        image_ids: Sequence[str],
        prefix: str = "",
        layers: Sequence[int] | None = None,
    ) -> list[BackboneOutput]:
        """Features of each image; `prefix` and `layers` do not apply to calibration features."""
        outputs = []
        for image, image_id in zip(images, image_ids, strict=True):
            grid = TokenGrid(self.rows, self.cols, image.height, image.width)
            features = self.image_features(image_id, grid)
            outputs.append(BackboneOutput(features.unsqueeze(0), None, None, grid, (0,)))
        return outputs

    def image_features(self, image_id: str, grid: TokenGrid) -> torch.Tensor:
        """[rows, cols, width] float32 features of one image."""
        raise NotImplementedError


@register("oracle")
class Oracle(_Calibration):
    def __init__(self, cfg: dict, dataset):
        super().__init__(cfg)
        self.dataset = dataset
        self.noise_std = float(cfg.get("noise_std", 0.0))
        self._text_ids: dict[str, set[int]] | None = None
        self._num_ids: int | None = None

    @classmethod
    def from_config(cls, cfg: dict, *, device: str, dtype: torch.dtype, dataset=None) -> "Oracle":
        if dataset is None:
            raise ValueError("the oracle backbone reads the dataset's ground truth: pass dataset=")
        return cls(cfg, dataset)

    def image_features(self, image_id: str, grid: TokenGrid) -> torch.Tensor:
        truth = self.dataset.oracle_truth(image_id)
        present = np.unique(truth.labels)
        if present.min() < 0 or present.max() >= truth.num_ids:
            raise ValueError(f"oracle truth of image {image_id!r} holds ids outside 0..{truth.num_ids - 1}")
        coverage = np.zeros((grid.rows, grid.cols, truth.num_ids), dtype=np.float32)
        for label in present:  # ids absent from the image cover nothing
            coverage[..., label] = grid.coverage(truth.labels == label)
        if truth.landmarks is not None:
            coverage = np.concatenate([coverage, landmark_channels(truth, grid)], axis=-1)
        features = torch.from_numpy(coverage)
        if self.noise_std:
            features += self.noise_std * seeded_gaussian(features.shape, self.seed, f"image:{image_id}")
        return features

    def encode_text(
        self, texts: Sequence[str], prefix: str = "", layers: Sequence[int] | None = None
    ) -> torch.Tensor:
        """[len(texts), 1, num_ids]: the indicator of the id each text names.

        Ids of a text come from every image's truth. A text naming different ids in different images
        (RefCOCO's per-image instance ids, e.g. "left man") gets the mean of their indicators.
        """
        text_ids, num_ids = self._collect_text_ids()
        indicators = torch.zeros(len(texts), 1, num_ids)
        for row, text in enumerate(texts):
            if text not in text_ids:
                raise KeyError(f"no image of dataset {self.dataset.name!r} names the text {text!r}")
            ids = sorted(text_ids[text])
            indicators[row, 0, ids] = 1.0 / len(ids)
        return indicators

    def _collect_text_ids(self) -> tuple[dict[str, set[int]], int]:
        if self._text_ids is None:
            self._text_ids, self._num_ids = {}, 0
            for ref in self.dataset.images():
                truth = self.dataset.oracle_truth(ref.image_id)
                self._num_ids = max(self._num_ids, truth.num_ids)
                for text, label in truth.text_ids.items():
                    self._text_ids.setdefault(text, set()).add(label)
        return self._text_ids, self._num_ids


def landmark_channels(truth, grid: TokenGrid) -> np.ndarray:
    """[rows, cols, num_ids]: exp(-d^2 / 2 sigma^2), d = distance from each cell centre to the id's
    keypoint, sigma = the cell's larger side; zero for ids without a keypoint in this image."""
    centers = grid.centers().reshape(grid.rows, grid.cols, 2)
    sigma = max(grid.width / grid.cols, grid.height / grid.rows)
    channels = np.zeros((grid.rows, grid.cols, truth.num_ids), dtype=np.float32)
    for label, (x, y) in truth.landmarks.items():
        squared = ((centers - np.array([x, y])) ** 2).sum(axis=-1)
        channels[..., label] = np.exp(-squared / (2 * sigma**2))
    return channels


@register("noise")
class Noise(_Calibration):
    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.width = int(cfg.get("width", DEFAULT_NOISE_WIDTH))

    @classmethod
    def from_config(cls, cfg: dict, *, device: str, dtype: torch.dtype, dataset=None) -> "Noise":
        return cls(cfg)

    def image_features(self, image_id: str, grid: TokenGrid) -> torch.Tensor:
        return seeded_gaussian((grid.rows, grid.cols, self.width), self.seed, f"image:{image_id}")

    def encode_text(
        self, texts: Sequence[str], prefix: str = "", layers: Sequence[int] | None = None
    ) -> torch.Tensor:
        """[len(texts), 1, width] seeded Gaussian vectors, one per text."""
        return torch.stack([seeded_gaussian((1, self.width), self.seed, f"text:{text}") for text in texts])
