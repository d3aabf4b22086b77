"""Tiny random-weight twins of the three MLMs, built in code (as transformers' own tests build them).

Each twin is the real model class and the stock processor of its family, with tiny widths, 4 LM
layers, 4 query heads over 2 KV heads (GQA kept), a locally built byte-level tokenizer and a chat
template in the family's format. The smoke run and the tests use them; a fixed seed makes every
build of a twin the same model, so nothing binary is stored.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    SiglipVisionConfig,
)

from imagekv.models.tokenizer import byte_level_tokenizer

ARCHITECTURES = ("llava_onevision", "qwen2_5_vl", "llava_next")

# The LM of every twin: what the extraction, the probes and the interventions see.
TINY_LM = dict(
    vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False,
)
# Vision towers: 96 px crops of 12 px patches give an 8x8 base grid for the LLaVA family.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
LLAVA_CROP, LLAVA_PATCH = 96, 12
LLAVA_PINPOINTS = [[96, 192], [192, 96], [192, 192], [96, 288], [288, 96]]
# Qwen2.5-VL: 14 px patches merged 2x2, so one LM token per 28 px; at most 16x16 tokens.
QWEN_PATCH, QWEN_MERGE = 14, 2
QWEN_MAX_PIXELS = (16 * 28) ** 2

QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<image>", "<video>",
]
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<image>", "<pad>",
]


def _content(image_markup: str) -> str:
    """Jinja for one message's content: a plain string, or parts of type image and text in order."""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image_markup
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    )


def _chatml_template(image_markup: str) -> str:
    """ChatML, as the Qwen2-based LLaVA-OneVision and Qwen2.5-VL use, with the default system turn."""
    return (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system{{ '\\n' }}You are a helpful assistant.<|im_end|>{{ '\\n' }}{% endif %}"
        "<|im_start|>{{ message['role'] }}{{ '\\n' }}" + _content(image_markup) + "<|im_end|>{{ '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
    )


LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>{{ '\\n\\n' }}"
    + _content("<image>{{ '\\n' }}") + "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{{ '\\n\\n' }}{% endif %}"
)


def build_tiny(architecture: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The tiny twin `architecture` (one of ARCHITECTURES) and its processor, in float32."""
    builders = {"llava_onevision": _llava_onevision, "qwen2_5_vl": _qwen2_5_vl, "llava_next": _llava_next}
    if architecture not in builders:
        raise ValueError(f"unknown tiny architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    model_class, config, processor = builders[architecture]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class._from_config(config, attn_implementation="sdpa")
    tokenizer = processor.tokenizer
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def _llava_onevision():
    tokenizer = byte_level_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            **TINY_VISION, image_size=LLAVA_CROP, patch_size=LLAVA_PATCH, vision_use_head=False
        ),
        text_config=Qwen2Config(**_lm(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=LLAVA_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    size = {"height": LLAVA_CROP, "width": LLAVA_CROP}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=LLAVA_PINPOINTS),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(LLAVA_CROP // LLAVA_PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=_chatml_template("<image>"),
    )
    return LlavaOnevisionForConditionalGeneration, config, processor


def _llava_next():
    tokenizer = byte_level_tokenizer(
        LLAMA3_SPECIALS, eos_token="<|eot_id|>", pad_token="<pad>", bos_token="<|begin_of_text|>"
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            **TINY_VISION, image_size=LLAVA_CROP, patch_size=LLAVA_PATCH, projection_dim=32
        ),
        text_config=LlamaConfig(**_lm(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=LLAVA_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # drops CLIP's CLS token
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": LLAVA_CROP},
            crop_size={"height": LLAVA_CROP, "width": LLAVA_CROP},
            image_grid_pinpoints=LLAVA_PINPOINTS,
        ),
        tokenizer=tokenizer,
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAMA3_TEMPLATE,
    )
    return LlavaNextForConditionalGeneration, config, processor


def _qwen2_5_vl():
    tokenizer = byte_level_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            **_lm(tokenizer),
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
            patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    pixels = dict(patch_size=QWEN_PATCH, merge_size=QWEN_MERGE, min_pixels=28 * 28, max_pixels=QWEN_MAX_PIXELS)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=_chatml_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration, config, processor


def _lm(tokenizer) -> dict:
    """The tiny LM's config keys, with the special token ids of the twin's own tokenizer."""
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    return {**TINY_LM, **ids}


def _mrope_section(head_dim: int) -> list[int]:
    """Temporal, height and width shares of the rotary half-dimension, in the 7B's 16:24:24 ratio."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]
