"""LLaVA-OneVision 7B (`llava-hf/llava-onevision-qwen2-7b-ov-hf`): SigLIP crops of 384 px, a 27x27
base grid, Qwen2-7B LM with 4 KV heads of 128 (512-d image values)."""

from transformers import LlavaOnevisionForConditionalGeneration

from imagekv.models.registry import register
from imagekv.models.vlm import AnyresBackbone


@register("llava_onevision")
class LlavaOnevision(AnyresBackbone):
    architecture = "llava_onevision"
    model_class = LlavaOnevisionForConditionalGeneration
