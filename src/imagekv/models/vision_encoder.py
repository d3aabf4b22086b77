"""What the reference encoders share (SigLIP, CLIP; SPEC 2.2): one hidden state on the patch grid.

A reference encoder is a vision transformer before any MLM training. Its dense feature is one
hidden state, `hidden_states[layer]` (hidden_states[0] is what the first block receives,
hidden_states[k] the k-th block's output), without the leading class token where the model has one.
The forward runs only as far as that layer. Subclasses say which model and processor, which module
gives `hidden_states[0]`, and how many leading tokens are not patches.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import PreTrainedModel

from imagekv.grid import TokenGrid
from imagekv.models.base import Backbone, BackboneOutput
from imagekv.models.partial_forward import forward_until

DEFAULT_LAYER = -2
TINY_SEED = 0


class VisionEncoder(Backbone):
    num_layers = 1  # one feature layer, chosen by the `layer` config key
    leading_tokens = 0  # tokens before the patches (CLIP's CLS), dropped from the features

    def __init__(self, model: PreTrainedModel, processor, layer: int | str):
        self.model = model.eval()
        self.processor = processor
        self.layer = layer
        config = model.config
        self.side = config.image_size // config.patch_size
        self.layer_index = self.hidden_state_index(layer, config.num_hidden_layers)
        self.feature_module = self.module_giving(self.layer_index)

    def hidden_state_index(self, layer: int | str, depth: int) -> int:
        """Non-negative index into hidden_states, which holds the input of the first block plus one
        entry per block."""
        if not isinstance(layer, int) or not -(depth + 1) <= layer <= depth:
            raise ValueError(f"{self.name} config key 'layer' is {layer!r}; expected an int indexing its "
                             f"{depth + 1} hidden states")
        return layer % (depth + 1)

    def module_giving(self, index: int) -> torch.nn.Module:
        """The module whose output is hidden_states[index]."""
        return self.first_hidden_state_module() if index == 0 else self.model.encoder.layers[index - 1]

    @abstractmethod
    def first_hidden_state_module(self) -> torch.nn.Module:
        """The module whose output is hidden_states[0]."""

    @classmethod
    def from_config(cls, cfg: dict, *, device: str, dtype: torch.dtype, dataset=None) -> "VisionEncoder":
        source = cfg.get("source", "hub")
        if source == "hub":
            model, processor = cls.from_hub(cfg["checkpoint"], cfg["revision"], dtype)
        elif source == "tiny":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED)
                model, processor = cls.tiny()
            model = model.to(dtype)
        else:
            raise ValueError(f"{cls.name} config key 'source' must be 'hub' or 'tiny', got {source!r}")
        return cls(model.to(device), processor, cfg.get("layer", DEFAULT_LAYER))

    @classmethod
    @abstractmethod
    def from_hub(cls, checkpoint: str, revision: str, dtype: torch.dtype):
        """(model, processor) of the pinned checkpoint."""

    @classmethod
    @abstractmethod
    def tiny(cls):
        """(model, processor) of the tiny random-weight twin (called under a fixed seed)."""

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The image as handed to the processor, whose output must tile the whole image."""
        return image

    @torch.no_grad()
    def encode(
        self, images: Sequence[Image.Image], prefix: str = "", layers: Sequence[int] | None = None
    ) -> list[BackboneOutput]:
        """One batched forward (no cross-image attention, so batching changes nothing), run only as far
        as the feature layer. `prefix` and `layers` do not apply: there is no text, and the one
        feature layer is fixed by the config."""
        prepared = [self.prepare_image(image) for image in images]
        pixels = self.processor(images=prepared, return_tensors="pt")["pixel_values"]
        parameter = next(self.model.parameters())
        pixels = pixels.to(parameter.device, parameter.dtype)
        tokens = forward_until(self.model, self.feature_module, {"pixel_values": pixels})
        dense = tokens[:, self.leading_tokens :].reshape(len(images), self.side, self.side, -1)
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
