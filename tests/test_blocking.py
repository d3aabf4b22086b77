"""Attention blocking inside each tiny twin's own forward pass, checked against its eager weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.interventions.blocking import all_image_keys, block_attention, random_control
from imagekv.interventions.multiple_choice import prepare_question
from imagekv.models.tiny import build_tiny

ARCHITECTURES = ("llava_onevision", "qwen2_5_vl", "llava_next")


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def twin(request):
    """A tiny twin with a two-image question in its native chat template."""
    model, processor = build_tiny(request.param, seed=0)
    model.eval()
    inputs, layout = prepare_question(processor, "Which image is brighter?\n(A) first\n(B) second", [_image(0), _image(1)])
    return model, dict(inputs), layout


def _forward(model, inputs, implementation, blocked=None, query_start=0, **kwargs):
    model.set_attn_implementation(implementation)
    with torch.no_grad(), block_attention(model, blocked or {}, query_start):
        return model(**inputs, **kwargs)


def _blocked_keys(layout) -> torch.Tensor:
    """Every other token of the first image and the first three of the second."""
    first = torch.arange(layout.image_starts[0], layout.image_starts[0] + layout.image_lengths[0], 2)
    second = torch.arange(layout.image_starts[1], layout.image_starts[1] + 3)
    return torch.cat([first, second])


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_empty_block_is_the_plain_forward(twin, implementation):
    model, inputs, layout = twin
    plain = _forward(model, inputs, implementation).logits
    assert torch.equal(_forward(model, inputs, implementation, {}, layout.query_start).logits, plain)
    empty = {0: torch.tensor([], dtype=torch.long), 1: torch.tensor([], dtype=torch.long)}
    assert torch.equal(_forward(model, inputs, implementation, empty, layout.query_start).logits, plain)


def test_block_zeroes_exactly_the_blocked_weights_and_renormalises_the_rest(twin):
    model, inputs, layout = twin
    layer, keys, start = 1, _blocked_keys(layout), layout.query_start
    plain = _forward(model, inputs, "eager", output_attentions=True).attentions
    blocked = _forward(model, inputs, "eager", {layer: keys}, start, output_attentions=True).attentions
    assert len(plain) >= 2
    # Layers before the blocked one, and the rows before query_start everywhere, are untouched.
    assert torch.equal(blocked[0], plain[0])
    for weights, reference in zip(blocked, plain):
        assert torch.equal(weights[..., :start, :], reference[..., :start, :])
    # In the blocked layer: zero on the blocked columns of the later rows, the rest renormalised.
    expected = plain[layer][..., start:, :].clone()
    expected[..., keys] = 0
    expected = expected / expected.sum(dim=-1, keepdim=True)
    got = blocked[layer][..., start:, :]
    assert torch.all(got[..., keys] == 0)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, plain[layer][..., start:, :])


def test_eager_and_sdpa_agree_with_the_block_active(twin):
    model, inputs, layout = twin
    blocked = {layer: _blocked_keys(layout) for layer in (0, 1)}
    eager = _forward(model, inputs, "eager", blocked, layout.query_start).logits
    sdpa = _forward(model, inputs, "sdpa", blocked, layout.query_start).logits
    plain = _forward(model, inputs, "eager").logits
    assert torch.allclose(eager, sdpa, atol=1e-5)
    assert not torch.allclose(eager, plain, atol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_block_holds_in_cached_generation(twin, implementation):
    """The second generated token's logits (one-token step over the cache) equal a full forward."""
    model, inputs, layout = twin
    blocked = {1: _blocked_keys(layout)}
    model.set_attn_implementation(implementation)
    with torch.no_grad(), block_attention(model, blocked, layout.query_start):
        generated = model.generate(
            **inputs, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    first_token = generated.sequences[:, inputs["input_ids"].shape[1]]
    extended = _append_text_token(inputs, first_token)
    full = _forward(model, extended, implementation, blocked, layout.query_start).logits[:, -1]
    assert torch.allclose(generated.logits[1], full, atol=1e-5)


def _append_text_token(inputs: dict, token: torch.Tensor) -> dict:
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([inputs["input_ids"], token[:, None]], dim=1)
    extended["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(token)[:, None]], dim=1)
    if "mm_token_type_ids" in inputs:  # Qwen2.5-VL: 0 marks a text token
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(token)[:, None]], 1)
    return extended


def test_controls_and_refusals(twin):
    model, _, layout = twin
    image_keys = torch.arange(layout.image_starts[0], layout.query_start)
    flagged = {1: torch.tensor([3, 5, 8]), 2: torch.tensor([4])}
    control = random_control(flagged, image_keys, seed=7)
    assert {layer: len(p) for layer, p in control.items()} == {1: 3, 2: 1}
    assert all(torch.isin(p, image_keys).all() for p in control.values())
    assert all(torch.equal(control[k], random_control(flagged, image_keys, seed=7)[k]) for k in control)
    assert torch.equal(all_image_keys([2], image_keys)[2], image_keys)
    with pytest.raises(ValueError, match="query_start"):
        with block_attention(model, {0: torch.tensor([layout.query_start])}, layout.query_start):
            pass
    with pytest.raises(ValueError, match="outside the LM"):
        with block_attention(model, {99: torch.tensor([0])}, layout.query_start):
            pass
