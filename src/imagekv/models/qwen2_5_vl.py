"""Qwen2.5-VL 7B (`Qwen/Qwen2.5-VL-7B-Instruct`): its own ViT with 14 px patches merged 2x2, so one
LM token per 28 px cell, in raster order over the merged grid; M-RoPE positions from
`mm_token_type_ids`. LM with 4 KV heads of 128 (512-d image values). Its projector (the patch
merger) reads the last ViT block's output; the tower representation is that output with the 2x2
patches of each LM token side by side, as the merger joins them (4 x 1280 = 5120-d).

Config keys: `resolution: fixed` (default) squashes every image to `fixed_grid` x `fixed_grid` cells
before the processor, so every image gives the same grid (SPEC 3.3: 27 -> 756 px, like the LLaVA
base views); `resolution: native` keeps the processor's own aspect-preserving resize.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.vision_utils import get_vision_window_index

from imagekv.grid import TokenGrid
from imagekv.models.registry import register
from imagekv.models.vlm import VlmBackbone

RESOLUTIONS = ("fixed", "native")
DEFAULT_FIXED_GRID = 27


@register("qwen2_5_vl")
class Qwen2_5_VL(VlmBackbone):
    architecture = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration

    def __init__(self, model, processor, cfg: dict):
        super().__init__(model, processor, cfg)
        self.resolution = cfg.get("resolution", "fixed")
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"{self.name} config key 'resolution' must be one of {RESOLUTIONS}, got {self.resolution!r}")
        self.fixed_grid = cfg.get("fixed_grid", DEFAULT_FIXED_GRID)
        image_processor = processor.image_processor
        self.merge = image_processor.merge_size
        self.cell = image_processor.patch_size * self.merge
        if self.resolution == "fixed":
            self._check_fixed_side_kept(image_processor.size)

    def _check_fixed_side_kept(self, size) -> None:
        """The processor resizes any image whose pixel count lies outside its bounds: a fixed side it
        would resize gives another grid than `fixed_grid` says."""
        side = self.fixed_grid * self.cell
        if not size["shortest_edge"] <= side * side <= size["longest_edge"]:
            raise ValueError(
                f"{self.name} config key 'fixed_grid' is {self.fixed_grid}: {side} px squares lie outside the "
                f"processor's {size['shortest_edge']}..{size['longest_edge']} pixels, which would resize them "
                f"to another grid"
            )

    def prepare_image(self, image: Image.Image) -> Image.Image:
        if self.resolution == "native":
            return image
        side = self.fixed_grid * self.cell
        return image.resize((side, side), Image.Resampling.BICUBIC)

    @property
    def projector(self) -> torch.nn.Module:
        return self.model.model.visual.merger

    def tower_tokens(self, projector_input: torch.Tensor, inputs: dict, token_index: torch.Tensor) -> torch.Tensor:
        """The merger receives [patches, C] in the ViT's window order, each merge unit's 2x2 patches
        in a row; the ViT puts its output back in raster order with the same window index."""
        visual = self.model.model.visual
        window_index, _ = get_vision_window_index(
            inputs["image_grid_thw"], spatial_merge_size=self.merge, window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        units = projector_input.reshape(len(window_index), -1)  # one row per LM token, window order
        raster = units[torch.argsort(window_index).to(units.device)]
        return raster[token_index.to(raster.device)]

    def grid_tokens(self, inputs: dict, image: Image.Image, num_image_tokens: int) -> tuple[torch.Tensor, TokenGrid]:
        _, patch_rows, patch_cols = inputs["image_grid_thw"][0].tolist()
        rows, cols = patch_rows // self.merge, patch_cols // self.merge
        if rows * cols != num_image_tokens:
            raise ValueError(f"{rows}x{cols} merged grid but {num_image_tokens} image tokens")
        return torch.arange(num_image_tokens), TokenGrid(rows, cols, image.height, image.width)
