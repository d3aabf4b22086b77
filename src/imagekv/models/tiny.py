"""Tiny random-weight twins of the three MLMs, built in code (as transformers' own tests build them).

Each twin is the real model class and the stock processor of its family, and speaks its checkpoint's
real language: the real tokenizer (real vocabulary, special tokens and ids), the published chat
template and the published processor settings (src/imagekv/models/checkpoints/, see published.py).
The token ids and the vocabulary size of the model config are the real ones too. What is tiny is the
network (widths, 4 LM layers, 4 query heads over 2 KV heads, GQA kept) and, so that it stays fast,
the image geometry: 96 px crops of 12 px patches with the pinpoints scaled to them for the LLaVA
family (the real ones: 384 / 336 px crops of 14 px patches), and at most 16x16 merged cells for
Qwen2.5-VL (the real max_pixels is 12,845,056). The smoke run and the tests use them; a fixed seed
makes every build of a twin the same model, so nothing binary is stored.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

from imagekv.models.published import published_file, published_processor, published_tokenizer

ARCHITECTURES = ("llava_onevision", "qwen2_5_vl", "llava_next")

# The LM of every twin: what the extraction, the probes and the interventions see.
TINY_LM = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False,
)
# Vision towers: 96 px crops of 12 px patches give an 8x8 base grid for the LLaVA family.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
LLAVA_CROP, LLAVA_PATCH = 96, 12
LLAVA_PINPOINTS = [[96, 192], [192, 96], [192, 192], [96, 288], [288, 96]]
# Qwen2.5-VL: the real 14 px patches merged 2x2, so one LM token per 28 px; at most 16x16 tokens.
QWEN_MAX_PIXELS = (16 * 28) ** 2


def build_tiny(architecture: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The tiny twin `architecture` (one of ARCHITECTURES) and its processor, in float32."""
    model_class, config, processor = _parts(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class._from_config(config, attn_implementation="sdpa")
    tokenizer = processor.tokenizer
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def tiny_parts(architecture: str) -> tuple[PretrainedConfig, ProcessorMixin]:
    """The twin's model config and processor, without building the network (imagekv.preflight)."""
    _, config, processor = _parts(architecture)
    return config, processor


def _parts(architecture: str):
    builders = {"llava_onevision": _llava_onevision, "qwen2_5_vl": _qwen2_5_vl, "llava_next": _llava_next}
    if architecture not in builders:
        raise ValueError(f"unknown tiny architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return builders[architecture]()


def _llava_onevision():
    name = "llava_onevision"
    tokenizer, real = published_tokenizer(name), published_file(name, "config.json")
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            **TINY_VISION, image_size=LLAVA_CROP, patch_size=LLAVA_PATCH, vision_use_head=False
        ),
        text_config=Qwen2Config(**_lm(tokenizer, real)),
        image_grid_pinpoints=LLAVA_PINPOINTS,
        **_keys(real, "image_token_index", "video_token_index", "vision_feature_layer",
                "vision_feature_select_strategy", "vision_aspect_ratio"),
    )
    processor = published_processor(
        name,
        image_geometry=dict(size={"height": LLAVA_CROP, "width": LLAVA_CROP}, image_grid_pinpoints=LLAVA_PINPOINTS),
        processor_geometry=dict(num_image_tokens=(LLAVA_CROP // LLAVA_PATCH) ** 2),
    )
    return LlavaOnevisionForConditionalGeneration, config, processor


def _llava_next():
    name = "llava_next"
    tokenizer, real = published_tokenizer(name), published_file(name, "config.json")
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            **TINY_VISION, image_size=LLAVA_CROP, patch_size=LLAVA_PATCH, projection_dim=32
        ),
        text_config=LlamaConfig(**_lm(tokenizer, real)),
        image_grid_pinpoints=LLAVA_PINPOINTS,
        **_keys(real, "image_token_index", "vision_feature_layer", "vision_feature_select_strategy"),
    )
    image_geometry = dict(
        size={"shortest_edge": LLAVA_CROP}, crop_size={"height": LLAVA_CROP, "width": LLAVA_CROP},
        image_grid_pinpoints=LLAVA_PINPOINTS,
    )
    processor = published_processor(name, image_geometry, processor_geometry=dict(patch_size=LLAVA_PATCH))
    return LlavaNextForConditionalGeneration, config, processor


def _qwen2_5_vl():
    name = "qwen2_5_vl"
    tokenizer, real = published_tokenizer(name), published_file(name, "config.json")
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    rope = {**real["text_config"]["rope_parameters"], "mrope_section": _mrope_section(head_dim)}
    config = Qwen2_5_VLConfig(
        text_config=dict(**_lm(tokenizer, real), rope_parameters=rope),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
            window_size=56, fullatt_block_indexes=[1],
            **_keys(real["vision_config"], "patch_size", "spatial_merge_size", "temporal_patch_size"),
        ),
        **_keys(real, "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
    )
    processor = published_processor(name, image_geometry=dict(max_pixels=QWEN_MAX_PIXELS))
    return Qwen2_5_VLForConditionalGeneration, config, processor


def _keys(config: dict, *names: str) -> dict:
    return {name: config[name] for name in names}


def _lm(tokenizer, real: dict) -> dict:
    """The tiny LM's config keys, with the real vocabulary size and the tokenizer's special token ids."""
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    vocab_size = real["text_config"]["vocab_size"]
    if vocab_size < len(tokenizer):
        raise ValueError(f"config.json of the checkpoint: vocab_size {vocab_size} < the tokenizer's {len(tokenizer)} tokens")
    return {**TINY_LM, **ids, "vocab_size": vocab_size}


def _mrope_section(head_dim: int) -> list[int]:
    """Temporal, height and width shares of the rotary half-dimension, in the 7B's 16:24:24 ratio."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]
