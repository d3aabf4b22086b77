"""The non-MLM-finetuned reference encoder of Llama-3-LLaVA-NeXT: OpenAI CLIP ViT-L/14-336 (SPEC 2.2).

Its dense features are `hidden_states[-2]` with CLS dropped, 24x24 patches: what LLaVA-NeXT's
projector receives from its own (fine-tuned) copy of this tower (its config.json:
`vision_feature_layer` -2, `vision_feature_select_strategy` "default"). hidden_states[0] is the
output of CLIP's pre-layernorm, which every block's input passes first.

Preprocessing is the checkpoint's published preprocessor_config.json (checkpoints/clip/, with its
source): bicubic resize of the shortest edge to 336 px, a 336x336 centre crop, OpenAI-CLIP mean and
std. [I] Each image is first squashed to 336x336 with that resampling, as LLaVA-NeXT's base view
squashes it, so the resize and the crop leave it as it is and the grid covers the whole image (the
centre crop alone would drop the sides of a non-square image, which the probes score).
"""

from __future__ import annotations

import json

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from imagekv.models.published import CHECKPOINTS
from imagekv.models.registry import register
from imagekv.models.vision_encoder import VisionEncoder

PREPROCESSOR = CHECKPOINTS / "clip" / "preprocessor_config.json"
IMAGE_SIZE = 336
# source "tiny": CLIP's input size with patches so large the grid is 8x8 (plus CLS), and tiny widths.
TINY_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
    image_size=IMAGE_SIZE, patch_size=42, projection_dim=32,
)


@register("clip")
class Clip(VisionEncoder):
    leading_tokens = 1  # CLS

    def first_hidden_state_module(self) -> torch.nn.Module:
        return self.model.pre_layrnorm

    def prepare_image(self, image: Image.Image) -> Image.Image:
        crop = self.processor.crop_size
        return image.resize((crop["width"], crop["height"]), Image.Resampling(self.processor.resample))

    @classmethod
    def from_hub(cls, checkpoint: str, revision: str, dtype: torch.dtype):
        model = CLIPVisionModel.from_pretrained(checkpoint, revision=revision, dtype=dtype)
        return model, CLIPImageProcessor.from_pretrained(checkpoint, revision=revision)

    @classmethod
    def tiny(cls):
        return CLIPVisionModel(CLIPVisionConfig(**TINY_CONFIG)), published_processor()


def published_processor() -> CLIPImageProcessor:
    """The processor of the committed preprocessor_config.json."""
    return CLIPImageProcessor(**json.loads(PREPROCESSOR.read_text()))
