"""Llama-3-LLaVA-NeXT 8B (`llava-hf/llama3-llava-next-8b-hf`): CLIP ViT-L/14 crops of 336 px with
CLS dropped, a 24x24 base grid, Llama-3-8B LM with 8 KV heads of 128 (1024-d image values)."""

from transformers import LlavaNextForConditionalGeneration

from imagekv.models.registry import register
from imagekv.models.vlm import AnyresBackbone


@register("llava_next")
class LlavaNext(AnyresBackbone):
    architecture = "llava_next"
    model_class = LlavaNextForConditionalGeneration
