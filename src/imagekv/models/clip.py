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
        processor = CLIPImageProcessor.from_pretrained(checkpoint, revision=revision)
        check_published(processor, f"{checkpoint}@{revision}")
        return model, processor

    @classmethod
    def tiny(cls):
        return CLIPVisionModel(CLIPVisionConfig(**TINY_CONFIG)), published_processor()


def published_processor() -> CLIPImageProcessor:
    """The processor of the committed preprocessor_config.json."""
    return CLIPImageProcessor(**json.loads(PREPROCESSOR.read_text()))


# The settings that decide the pixels the model sees.
CHECKED_SETTINGS = (
    "size", "crop_size", "do_center_crop", "do_resize", "do_normalize", "image_mean", "image_std", "resample",
)


def check_published(processor: CLIPImageProcessor, source: str) -> None:
    """The downloaded processor must preprocess as the committed file says (the twin and the tests use
    that file); a difference is an error naming each setting."""
    published = published_processor()
    differ = [key for key in CHECKED_SETTINGS if _plain(getattr(processor, key)) != _plain(getattr(published, key))]
    if differ:
        raise ValueError(f"{source}: preprocessor settings {differ} differ from the committed {PREPROCESSOR}")


def _plain(value):
    """Comparable form of a processor setting (size objects, enums, tuples)."""
    if hasattr(value, "items"):
        return {k: v for k, v in dict(value.items()).items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return int(value) if not isinstance(value, bool) and hasattr(value, "__int__") else value
