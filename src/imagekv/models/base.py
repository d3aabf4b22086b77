"""The one contract every backbone implements (one class per backbone, like probe3d).

A backbone turns an image (plus an optional text prefix placed before it) into dense per-layer
features on a `TokenGrid`. For the multimodal LMs these are the image keys and values of every LM
layer, read from the KV cache exactly as the model stores it, plus the projector output at the
image positions; reference encoders (SigLIP) and the calibration backbones (oracle, noise) fill
`values` with their features and leave the rest empty.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from imagekv.grid import TokenGrid


@dataclass
class BackboneOutput:
    """Features of one image. Shapes: values/keys [layers, rows, cols, kv_heads*head_dim];
    projection [rows, cols, hidden]; tower [rows, cols, C], the MLM's own vision tower output that
    its projector receives. `layers` lists the LM layer index of each leading entry."""

    values: torch.Tensor
    keys: torch.Tensor | None
    projection: torch.Tensor | None
    grid: TokenGrid
    layers: tuple[int, ...]
    tower: torch.Tensor | None = None


class Backbone(ABC):
    """One model whose image representations are probed."""

    name: str  # set by @register
    num_layers: int  # layers this backbone reports (LM depth for the MLMs)

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: dict, *, device: str, dtype: torch.dtype, dataset=None) -> "Backbone":
        """Build from a `models:` config section; `dataset` is only used by the oracle backbone."""

    @abstractmethod
    def encode(
        self, images: Sequence[Image.Image], prefix: str = "", layers: Sequence[int] | None = None
    ) -> list[BackboneOutput]:
        """Features of each image, each in its own forward pass context (one image per sequence)."""

    def encode_with_ids(
        self,
        images: Sequence[Image.Image],
        image_ids: Sequence[str],
        prefix: str = "",
        layers: Sequence[int] | None = None,
    ) -> list[BackboneOutput]:
        """What the extraction runner calls. Models see only pixels; the calibration backbones,
        whose features come from the dataset's ground truth, override this to use the image ids."""
        return self.encode(images, prefix, layers)

    def prompt_text(self, prefix: str = "") -> str | None:
        """The exact text the model reads with one image (None for encoders without text)."""
        return None

    def encode_items(
        self, images: Sequence[Image.Image], prefixes: Sequence[str], queries: Sequence[str],
        layers: Sequence[int] | None = None,
    ) -> list[tuple[BackboneOutput, torch.Tensor]]:
        """Per image, after its own prefix and followed by its query in one sequence: its features
        and the query's last-token value [layers, kv_heads*head_dim] (E5 per-item prefixes)."""
        raise NotImplementedError(f"{self.name} has no text tokens")

    def encode_text(
        self, texts: Sequence[str], prefix: str = "", layers: Sequence[int] | None = None
    ) -> torch.Tensor:
        """[len(texts), layers, kv_heads*head_dim]: the value of each text's last token per layer."""
        raise NotImplementedError(f"{self.name} has no text tokens")
