"""Llama-3-LLaVA-NeXT 8B (`llava-hf/llama3-llava-next-8b-hf`): CLIP ViT-L/14 crops of 336 px with
CLS dropped, a 24x24 base grid, Llama-3-8B LM with 8 KV heads of 128 (1024-d image values)."""

from collections.abc import Sequence

from PIL import Image
from transformers import LlavaNextForConditionalGeneration

from imagekv.models.registry import register
from imagekv.models.vlm import AnyresBackbone


@register("llava_next")
class LlavaNext(AnyresBackbone):
    architecture = "llava_next"
    model_class = LlavaNextForConditionalGeneration

    def question_images(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """LLaVA-NeXT has no multi-image mode, and the anyres tilings of 3-4 BLINK images overflow its
        8,192-token context. Policy [I]: with several images, each is squashed to one crop, as its base
        view squashes it, so its high-resolution tiles add no pixels beyond the base view; at 336 px an
        image then takes 576 + 24 x 25 = 1,176 tokens (4 images: 4,704)."""
        if len(images) < 2:
            return list(images)
        crop = self.processor.image_processor.crop_size
        return [image.resize((crop["width"], crop["height"]), Image.Resampling.BICUBIC) for image in images]
