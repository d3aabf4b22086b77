"""The non-MLM-finetuned reference encoder: SigLIP so400m-patch14-384 (SPEC 2.2).

Its dense features are one hidden state on the 27x27 patch grid. The default is `hidden_states[-2]`,
the output of the second-to-last block before the post-layernorm: what LLaVA-OneVision's projector
receives. `layer: last` takes the post-layernorm `last_hidden_state` instead (ablation). The processor
squashes every image to 384x384, so the grid covers the whole original image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from imagekv.grid import TokenGrid
from imagekv.models.base import Backbone, BackboneOutput
from imagekv.models.partial_forward import forward_until
from imagekv.models.registry import register

LAST = "last"
DEFAULT_LAYER = -2
IMAGE_SIZE = 384
# source "tiny": SigLIP's input size with patches so large the grid is 8x8, and tiny widths.
TINY_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
    image_size=IMAGE_SIZE, patch_size=48, vision_use_head=False,
)
TINY_SEED = 0


@register("siglip")
class Siglip(Backbone):
    num_layers = 1  # one feature layer, chosen by the `layer` config key

    def __init__(self, model: SiglipVisionModel, processor: SiglipImageProcessor, layer: int | str):
        self.model = model.eval()
        self.processor = processor
        self.layer = layer
        config = model.config
        self.side = config.image_size // config.patch_size
        depth = config.num_hidden_layers
        self.layer_index = depth if layer == LAST else _hidden_state_index(layer, depth)
        self.feature_module = self._module_giving_features()

    def _module_giving_features(self) -> torch.nn.Module:
        """hidden_states[0] is the embeddings' output, hidden_states[k] the k-th block's; `last` is
        the post-layernorm's, before the pooling head."""
        if self.layer == LAST:
            return self.model.post_layernorm
        if self.layer_index == 0:
            return self.model.embeddings
        return self.model.encoder.layers[self.layer_index - 1]

    @classmethod
    def from_config(cls, cfg: dict, *, device: str, dtype: torch.dtype, dataset=None) -> "Siglip":
        layer = cfg.get("layer", DEFAULT_LAYER)
        if not (layer == LAST or isinstance(layer, int)):
            raise ValueError(f"siglip config key 'layer' must be an int or {LAST!r}, got {layer!r}")
        source = cfg.get("source", "hub")
        if source == "hub":
            checkpoint, revision = cfg["checkpoint"], cfg["revision"]
            model = SiglipVisionModel.from_pretrained(checkpoint, revision=revision, dtype=dtype)
            processor = SiglipImageProcessor.from_pretrained(checkpoint, revision=revision)
        elif source == "tiny":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED)
                model = SiglipVisionModel(SiglipVisionConfig(**TINY_CONFIG)).to(dtype)
            processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        else:
            raise ValueError(f"siglip config key 'source' must be 'hub' or 'tiny', got {source!r}")
        return cls(model.to(device), processor, layer)

    @torch.no_grad()
    def encode(
        self, images: Sequence[Image.Image], prefix: str = "", layers: Sequence[int] | None = None
    ) -> list[BackboneOutput]:
        """One batched forward (no cross-image attention, so batching changes nothing), run only as far
        as the feature layer. `prefix` and `layers` do not apply: there is no text, and the one
        feature layer is fixed by the config."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        parameter = next(self.model.parameters())
        pixels = pixels.to(parameter.device, parameter.dtype)
        tokens = forward_until(self.model, self.feature_module, {"pixel_values": pixels})
        dense = tokens.reshape(len(images), self.side, self.side, -1)
        return [
            BackboneOutput(
                values=dense[i : i + 1].cpu(),
                keys=None,
                projection=None,
                grid=TokenGrid(self.side, self.side, image.height, image.width),
                layers=(self.layer_index,),
            )
            for i, image in enumerate(images)
        ]


def _hidden_state_index(layer: int, depth: int) -> int:
    """Non-negative index into hidden_states, which holds the embeddings plus one entry per block."""
    if not -(depth + 1) <= layer <= depth:
        raise ValueError(f"siglip config key 'layer' is {layer}; the model has {depth + 1} hidden states")
    return layer % (depth + 1)
