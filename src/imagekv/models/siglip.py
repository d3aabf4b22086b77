"""The non-MLM-finetuned reference encoder of LLaVA-OneVision: SigLIP so400m-patch14-384 (SPEC 2.2).

Its dense features are one hidden state on the 27x27 patch grid (no class token). The default is
`hidden_states[-2]`, the output of the second-to-last block before the post-layernorm: what
LLaVA-OneVision's projector receives (its tower is this model with the last block removed, read at
its own hidden_states[-1]). `layer: last` takes the post-layernorm `last_hidden_state` instead
(ablation). The processor squashes every image to 384x384, so the grid covers the whole image.
"""

from __future__ import annotations

import torch
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from imagekv.models.registry import register
from imagekv.models.vision_encoder import VisionEncoder

LAST = "last"
IMAGE_SIZE = 384
# source "tiny": SigLIP's input size with patches so large the grid is 8x8, and tiny widths.
TINY_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
    image_size=IMAGE_SIZE, patch_size=48, vision_use_head=False,
)


@register("siglip")
class Siglip(VisionEncoder):
    def hidden_state_index(self, layer: int | str, depth: int) -> int:
        return depth if layer == LAST else super().hidden_state_index(layer, depth)

    def module_giving(self, index: int) -> torch.nn.Module:
        """`last` is the post-layernorm's output, before the pooling head."""
        return self.model.post_layernorm if self.layer == LAST else super().module_giving(index)

    def first_hidden_state_module(self) -> torch.nn.Module:
        return self.model.embeddings

    @classmethod
    def from_hub(cls, checkpoint: str, revision: str, dtype: torch.dtype):
        model = SiglipVisionModel.from_pretrained(checkpoint, revision=revision, dtype=dtype)
        return model, SiglipImageProcessor.from_pretrained(checkpoint, revision=revision)

    @classmethod
    def tiny(cls):
        model = SiglipVisionModel(SiglipVisionConfig(**TINY_CONFIG))
        return model, SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
