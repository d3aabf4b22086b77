"""The SigLIP reference backbone returns the model's own hidden state at the configured layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.grid import TokenGrid
from imagekv.models.registry import build_backbone


def build(**cfg):
    return build_backbone("siglip", {"source": "tiny", **cfg}, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 160), (200, 120))]


def own_hidden_states(backbone, images):
    """The model's forward on the processor's pixels, outside the backbone."""
    pixels = backbone.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return backbone.model(pixel_values=pixels, output_hidden_states=True)


def test_default_is_the_penultimate_hidden_state_on_the_patch_grid(images):
    backbone = build()
    outputs = backbone.encode(images)
    reference = own_hidden_states(backbone, images)
    depth = backbone.model.config.num_hidden_layers
    side = backbone.model.config.image_size // backbone.model.config.patch_size
    for index, (image, output) in enumerate(zip(images, outputs)):
        expected = reference.hidden_states[-2][index].reshape(1, side, side, -1)
        torch.testing.assert_close(output.values, expected, rtol=1e-5, atol=1e-5)
        assert output.grid == TokenGrid(side, side, image.height, image.width)
        assert output.layers == (depth - 1,)
        assert output.keys is None and output.projection is None


@pytest.mark.parametrize("layer", [0, 1, 2, 3, -4])
def test_every_hidden_state_equals_the_models_own(images, layer):
    """The forward stops at the block giving the feature; what it computed is the full forward's."""
    backbone = build(layer=layer)
    got = torch.cat([output.values for output in backbone.encode(images)])
    expected = own_hidden_states(backbone, images).hidden_states[layer]
    assert torch.equal(got, expected.reshape_as(got))


def test_last_is_post_layernorm_and_differs_from_the_last_block(images):
    last = build(layer="last")
    reference = own_hidden_states(last, images)
    post_ln = last.model.post_layernorm(reference.hidden_states[-1]).detach()
    side = last.side
    got = torch.cat([o.values for o in last.encode(images)])
    torch.testing.assert_close(got, post_ln.reshape(len(images), side, side, -1), rtol=1e-5, atol=1e-5)
    pre_ln = torch.cat([o.values for o in build(layer=-1).encode(images)])
    torch.testing.assert_close(pre_ln, reference.hidden_states[-1].reshape_as(pre_ln), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, pre_ln, atol=1e-3)


def test_an_image_gets_the_same_features_alone_or_in_a_batch(images):
    backbone = build()
    together = backbone.encode(images)
    for image, batched in zip(images, together):
        torch.testing.assert_close(backbone.encode([image])[0].values, batched.values, rtol=1e-5, atol=1e-5)


def test_tiny_twin_is_the_same_model_every_build():
    first, second = build().model.state_dict(), build().model.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("layer", [4, -5, "first"])
def test_a_layer_outside_the_model_is_refused(layer):
    with pytest.raises(ValueError, match="'layer'"):
        build(layer=layer)
