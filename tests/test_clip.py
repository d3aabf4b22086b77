"""The CLIP ViT-L/14-336 reference (LLaVA-NeXT's encoder before LLaVA training) on its tiny twin:
the model's own hidden state at the configured layer, CLS dropped, on the patch grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.grid import TokenGrid
from imagekv.models.clip import TINY_CONFIG, check_published, published_processor
from imagekv.models.published import published_file
from imagekv.models.registry import build_backbone


def build(**cfg):
    return build_backbone("clip", {"source": "tiny", **cfg}, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 160), (200, 120))]


def own_hidden_states(backbone, images):
    """The model's forward on the processor's pixels of the squashed images, outside the backbone."""
    squashed = [image.resize((336, 336), Image.Resampling.BICUBIC) for image in images]
    pixels = backbone.processor(images=squashed, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return backbone.model(pixel_values=pixels, output_hidden_states=True).hidden_states


def test_default_is_hidden_states_minus_2_without_cls_on_the_patch_grid(images):
    backbone = build()
    outputs = backbone.encode(images)
    hidden = own_hidden_states(backbone, images)[-2]  # [images, 1 + side*side, C]
    side = TINY_CONFIG["image_size"] // TINY_CONFIG["patch_size"]
    assert hidden.shape[1] == 1 + side * side
    for index, (image, output) in enumerate(zip(images, outputs)):
        assert torch.equal(output.values, hidden[index, 1:].reshape(1, side, side, -1))
        assert output.grid == TokenGrid(side, side, image.height, image.width)
        assert output.layers == (TINY_CONFIG["num_hidden_layers"] - 1,)
        assert output.keys is None and output.projection is None


@pytest.mark.parametrize("layer", [0, 1, 3, -4])
def test_every_hidden_state_equals_the_models_own(images, layer):
    got = torch.cat([output.values for output in build(layer=layer).encode(images)])
    expected = own_hidden_states(build(layer=layer), images)[layer][:, 1:]
    assert torch.equal(got, expected.reshape_as(got))


def test_the_grid_covers_the_whole_image_whatever_its_aspect():
    """Squashed before the processor: its shortest-edge resize and centre crop then keep every
    pixel, so a stripe at the left edge reaches the left column of tokens and nothing else."""
    backbone = build(layer=0)
    plain = Image.new("RGB", (300, 100), (128, 128, 128))
    marked = plain.copy()
    marked.paste((255, 0, 0), (0, 0, 20, 100))
    changed = (backbone.encode([marked])[0].values - backbone.encode([plain])[0].values).abs().sum(-1)[0]
    side = backbone.side
    assert changed[:, 0].min() > 0 and changed[:, 2:].max() == 0 and changed.shape == (side, side)


def test_preprocessing_is_the_published_file():
    processor = published_processor()
    assert processor.size["shortest_edge"] == 336 and processor.crop_size == {"height": 336, "width": 336}
    assert list(processor.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert list(processor.image_std) == [0.26862954, 0.26130258, 0.27577711]
    assert int(processor.resample) == 3 and processor.do_center_crop


def test_a_downloaded_processor_that_preprocesses_otherwise_is_refused_naming_the_setting():
    check_published(published_processor(), "hub copy")
    other = published_processor()
    other.image_mean = [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"hub copy: preprocessor settings \['image_mean'\] differ"):
        check_published(other, "hub copy")


def test_the_real_tower_has_the_architecture_of_llava_nexts():
    """The CLIP reference is the tower LLaVA-NeXT was built from: same image size and patch grid."""
    tower = published_file("llava_next", "config.json")["vision_config"]
    assert tower["image_size"] // tower["patch_size"] == 24 and tower["num_hidden_layers"] == 24
    assert TINY_CONFIG["image_size"] == tower["image_size"]


def test_tiny_twin_is_the_same_model_every_build():
    first, second = build().model.state_dict(), build().model.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("layer", [4, -5, "last"])
def test_a_layer_outside_the_model_is_refused(layer):
    with pytest.raises(ValueError, match="'layer'"):
        build(layer=layer)
