"""Prompts exactly as each model's own processor and chat template build them (SPEC 3.2).

A prompt is one user turn rendered by the processor's chat template, then tokenized the way the
processor's `apply_chat_template(tokenize=True)` tokenizes it: with the tokenizer's special tokens
(Llama-3's `<|begin_of_text|>`) unless the rendered text already starts with the BOS token. Nothing is
assumed about how a template lays out its turns: an image prompt is cut right after the image's
placeholder of the rendered turn (under causal attention nothing later changes the image's keys and
values), and a text prefix (E5) is inserted where the rendered image part begins.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from transformers import BatchFeature, ProcessorMixin


def user_turn(processor: ProcessorMixin, content: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """One user turn holding the `content` parts ({"type": "image"} or {"type": "text", "text": ...})."""
    messages = [{"role": "user", "content": list(content)}]
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def image_prompt(processor: ProcessorMixin, prefix: str = "") -> str:
    """The text the processor receives for one image: the template's user turn holding the image,
    `prefix` where the image part begins, cut after the image placeholder."""
    with_image = user_turn(processor, [{"type": "image"}])
    placeholder = processor.image_token
    if placeholder not in with_image:
        raise ValueError(
            f"{type(processor).__name__}: the chat template renders an image part without the image "
            f"placeholder {placeholder!r}: {with_image!r}"
        )
    start = _first_difference(processor.tokenizer, with_image, user_turn(processor, []))
    end = with_image.rindex(placeholder) + len(placeholder)
    return with_image[:start] + prefix + with_image[start:end]


def image_query_prompt(processor: ProcessorMixin, prefix: str, query: str) -> str:
    """`image_prompt` followed by `query` as the template's user turn lays out an image then a text,
    cut after the query (SPEC T3 (b), E5 in-context: the query's value has attended to the image).
    The image prompt is its exact start, so the image's keys and values stay those it gives alone."""
    head = image_prompt(processor)
    rendered = user_turn(processor, [{"type": "image"}, {"type": "text", "text": query}])
    if not rendered.startswith(head) or query not in rendered[len(head):]:
        raise ValueError(f"{type(processor).__name__}: the chat template's turn of an image then the text "
                         f"{query!r} does not continue its image prompt {head!r}: {rendered!r}")
    return image_prompt(processor, prefix) + rendered[len(head) : rendered.rindex(query) + len(query)]


def text_prompt(processor: ProcessorMixin, text: str) -> str:
    """The template's user turn holding `text` alone, cut after the text."""
    rendered = user_turn(processor, [{"type": "text", "text": text}])
    return rendered[: rendered.rindex(text) + len(text)]


def adds_special_tokens(processor: ProcessorMixin, text: str) -> bool:
    """What the processor's own apply_chat_template(tokenize=True) passes as `add_special_tokens`:
    True, unless the rendered text already starts with the tokenizer's BOS token."""
    bos = processor.tokenizer.bos_token
    return not (bos is not None and text.startswith(bos))


def processor_inputs(processor: ProcessorMixin, text: str, images: Sequence[Image.Image]) -> BatchFeature:
    """The processor's tensors for a rendered prompt and its images, tokenized as the processor's own
    chat-template path tokenizes them."""
    return processor(
        text=text, images=list(images), return_tensors="pt", add_special_tokens=adds_special_tokens(processor, text)
    )


def text_ids(processor: ProcessorMixin, text: str):
    """Token ids [1, seq] of a rendered text-only prompt, tokenized likewise."""
    tokenizer = processor.tokenizer
    return tokenizer(text, return_tensors="pt", add_special_tokens=adds_special_tokens(processor, text))["input_ids"]


def _first_difference(tokenizer, text: str, other: str) -> int:
    """Character offset in `text` of its first token that differs from `other`'s tokens (tokens, not
    characters: "<image>" and "<|im_end|>" share their first character)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, other_ids = encoded["input_ids"], tokenizer(other, add_special_tokens=False)["input_ids"]
    index = next((i for i, (a, b) in enumerate(zip(ids, other_ids)) if a != b), min(len(ids), len(other_ids)))
    return encoded["offset_mapping"][index][0] if index < len(ids) else len(text)
