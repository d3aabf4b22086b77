"""The three MLM adapters on their tiny twins: image KV read exactly as the model's own cache holds it."""

import numpy as np
import pytest
import torch
from PIL import Image

from transformers.vision_utils import get_vision_window_index

from imagekv.models.prompts import processor_inputs, text_ids, text_prompt, user_turn
from imagekv.models.registry import build_backbone

MODELS = ("llava_onevision", "qwen2_5_vl", "llava_next")


def _image(seed: int, size=(40, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))


def _backbone(name: str, **cfg):
    return build_backbone(name, {"source": "tiny", "fixed_grid": 4, **cfg}, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module", params=MODELS)
def backbone(request):
    return _backbone(request.param)


def _plain_forward(backbone, image, prefix=""):
    """The model's own forward on the adapter's inputs, and the mask of the image positions."""
    inputs = backbone.model_inputs(image, prefix)
    with torch.no_grad():
        out = backbone.model(**inputs, use_cache=True)
    return out.past_key_values, inputs["input_ids"][0] == backbone.processor.image_token_id


def test_keys_and_values_equal_the_models_own_past_key_values(backbone):
    image = _image(0)
    (output,) = backbone.encode([image])
    cache, is_image = _plain_forward(backbone, image)
    rows, cols = output.grid.rows, output.grid.cols
    assert output.layers == tuple(range(backbone.num_layers)) and backbone.num_layers == 4
    for layer in range(backbone.num_layers):
        for name, stored in (("keys", output.keys), ("values", output.values)):
            entry = getattr(cache.layers[layer], name)[0]  # [kv_heads, seq, head_dim]
            image_tokens = entry[:, is_image][:, : rows * cols]  # the grid tokens lead the image run
            expected = torch.cat(list(image_tokens), dim=-1)  # heads side by side
            got = stored[layer].reshape(rows * cols, -1)
            assert got.dtype == expected.dtype and torch.equal(got, expected), (name, layer)
    assert output.values.shape == (4, rows, cols, 2 * 16)


def test_selected_layers_are_the_same_numbers(backbone):
    image = _image(1)
    (full,) = backbone.encode([image])
    (some,) = backbone.encode([image], layers=[1, 3])
    assert some.layers == (1, 3)
    assert torch.equal(some.values, full.values[[1, 3]]) and torch.equal(some.keys, full.keys[[1, 3]])


def test_the_forward_stops_once_the_deepest_layer_read_has_written_its_cache(backbone):
    ran = []
    later = {"mlp of layer 1": backbone.decoder_layers[1].mlp, "layer 2": backbone.decoder_layers[2],
             "lm head": backbone.model.lm_head}
    handles = [module.register_forward_hook(lambda *_, name=name: ran.append(name)) for name, module in later.items()]
    try:
        backbone.encode([_image(1)], layers=[0, 1])
        backbone.encode_text(["a cat"], layers=[0, 1])
        assert ran == []
        _plain_forward(backbone, _image(1))  # the stop is gone: a plain forward runs to the end
        assert sorted(ran) == sorted(later)
    finally:
        for handle in handles:
            handle.remove()


def test_the_prompt_ends_with_the_image_and_a_prefix_goes_right_before_the_image_part(backbone):
    """Exact token ids against the published templates: tests/test_prompts.py."""
    plain, prefixed = backbone.prompt_text(), backbone.prompt_text("Look: ")
    assert plain.endswith(backbone.processor.image_token)
    start = prefixed.index("Look: ")
    assert prefixed[:start] + prefixed[start + len("Look: ") :] == plain
    assert prefixed[start + len("Look: ") :].startswith(("<image>", "<|vision_start|>"))


def test_a_prefix_changes_the_image_kv_and_text_after_the_image_does_not(backbone):
    image = _image(2)
    (plain,) = backbone.encode([image])
    (prefixed,) = backbone.encode([image], prefix="Find the dog. ")
    assert not torch.allclose(plain.values[1:], prefixed.values[1:])
    # Causality: the whole turn the template renders (the question after the image, the generation
    # header) leaves the image's cache entries as the prompt cut after the image has them.
    turn = user_turn(backbone.processor, [{"type": "image"}, {"type": "text", "text": "What is this?"}], True)
    inputs = processor_inputs(backbone.processor, turn, [backbone.prepare_image(image)])
    with torch.no_grad():
        cache = backbone.model(**inputs, use_cache=True).past_key_values
    rows, cols = plain.grid.rows, plain.grid.cols
    is_image = inputs["input_ids"][0] == backbone.processor.image_token_id
    values = torch.cat(list(cache.layers[2].values[0][:, is_image][:, : rows * cols]), dim=-1)
    assert torch.allclose(values, plain.values[2].reshape(rows * cols, -1), atol=1e-6)


def test_projection_is_the_lm_input_at_the_grid_tokens(backbone):
    image = _image(3)
    (output,) = backbone.encode([image])
    inputs = backbone.model_inputs(image)
    with torch.no_grad():
        embeddings = backbone.model(**inputs, output_hidden_states=True).hidden_states[0][0]
    is_image = inputs["input_ids"][0] == backbone.processor.image_token_id
    n = output.grid.rows * output.grid.cols
    assert torch.equal(output.projection.reshape(n, -1), embeddings[is_image][:n])
    assert output.projection.shape[-1] == backbone.model.config.get_text_config().hidden_size


def test_pre_rope_keys_are_k_proj_of_the_normed_hidden_state(backbone):
    image = _image(4)
    pre = _backbone(backbone.name, keys="pre_rope")
    (output,) = pre.encode([image])
    inputs = pre.model_inputs(image)
    with torch.no_grad():
        hidden = pre.model(**inputs, output_hidden_states=True).hidden_states
    is_image = inputs["input_ids"][0] == pre.processor.image_token_id
    n = output.grid.rows * output.grid.cols
    for layer_index, layer in enumerate(pre.decoder_layers):
        with torch.no_grad():
            expected = layer.self_attn.k_proj(layer.input_layernorm(hidden[layer_index][0]))[is_image][:n]
        assert torch.allclose(output.keys[layer_index].reshape(n, -1), expected, atol=1e-5)
    (post,) = backbone.encode([image])
    assert torch.equal(output.values, post.values) and not torch.allclose(output.keys[1], post.keys[1])


def test_text_values_are_the_last_text_token_of_the_cache(backbone):
    values = backbone.encode_text(["a cat", "the red car on the left"], layers=[0, 2])
    assert values.shape == (2, 2, 32)
    ids = text_ids(backbone.processor, text_prompt(backbone.processor, "a cat"))
    with torch.no_grad():
        cache = backbone.model(input_ids=ids, use_cache=True).past_key_values
    assert torch.equal(values[0, 1], torch.cat(list(cache.layers[2].values[0][:, -1])))


def test_base_view_grid_is_fixed_and_covers_the_whole_image():
    for name, side in (("llava_onevision", 8), ("llava_next", 8), ("qwen2_5_vl", 4)):
        backbone = _backbone(name)
        grids = [backbone.encode([_image(5, size)])[0].grid for size in ((40, 56), (90, 30), (64, 64))]
        assert [(g.rows, g.cols) for g in grids] == [(side, side)] * 3
        assert (grids[1].height, grids[1].width) == (90, 30)


def test_qwen_native_resolution_follows_the_image_aspect():
    backbone = _backbone("qwen2_5_vl", resolution="native")
    (output,) = backbone.encode([_image(6, (56, 112))])
    assert (output.grid.rows, output.grid.cols) == (2, 4)


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next"])
def test_crop_view_skips_exactly_the_newline_tokens(name):
    """The projection at every position the crop view skips is the model's own image_newline."""
    backbone = _backbone(name, view="crops")
    image = _image(7, (60, 150))  # wide: crops two across
    (output,) = backbone.encode([image])
    inputs = backbone.model_inputs(image)
    with torch.no_grad():
        embeddings = backbone.model(**inputs, output_hidden_states=True).hidden_states[0][0]
    image_rows = embeddings[inputs["input_ids"][0] == backbone.processor.image_token_id]
    crop_rows = image_rows[backbone.side**2 :]
    newline = backbone.model.model.image_newline
    is_newline = torch.tensor([torch.equal(row, newline) for row in crop_rows])
    rows, cols = output.grid.rows, output.grid.cols
    assert cols > rows and int(is_newline.sum()) == rows
    assert torch.equal(output.projection.reshape(rows * cols, -1), crop_rows[~is_newline])


def test_bad_config_keys_are_named():
    with pytest.raises(ValueError, match="'keys'"):
        _backbone("llava_onevision", keys="sideways")
    with pytest.raises(ValueError, match="'view'"):
        _backbone("llava_next", view="tiles")
    with pytest.raises(ValueError, match="'resolution'"):
        _backbone("qwen2_5_vl", resolution="huge")
    with pytest.raises(ValueError, match="'source'"):
        _backbone("qwen2_5_vl", source="disk")


def test_a_fixed_grid_the_processor_would_resize_is_refused():
    """The twin's processor keeps at most 16x16 cells: a 27x27 fixed grid would silently come out 16x16."""
    with pytest.raises(ValueError, match=r"'fixed_grid' is 27: 756 px"):
        _backbone("qwen2_5_vl", fixed_grid=27)
    assert _backbone("qwen2_5_vl", fixed_grid=16).fixed_grid == 16


def test_every_build_of_a_twin_is_the_same_model():
    first, second = _backbone("llava_next"), _backbone("llava_next")
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name


def _without_vision_attention(backbone):
    """Zero the output projection of every attention block of the vision tower: each patch is then
    encoded on its own, so a token's projector output depends on its own pixels only."""
    for name, module in backbone.model.named_modules():
        if ("vision_tower" in name or "visual" in name) and name.endswith(("self_attn.out_proj", "attn.proj")):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return backbone


@pytest.mark.parametrize("name, cell", [("llava_onevision", 24), ("llava_next", 24), ("qwen2_5_vl", 56)])
def test_changing_one_grid_cell_changes_its_token_only(name, cell):
    """Images twice the model's grid resolution: grid cell (r, c) is the square of side `cell` at
    (r*cell, c*cell). Repainting the inside of one cell (a margin keeps the resize kernel inside it)
    changes the projector output at token (r, c) of the grid, and no other token."""
    backbone = _without_vision_attention(_backbone(name))
    side = 8 if name != "qwen2_5_vl" else 4
    pixels = np.random.default_rng(8).integers(0, 256, size=(side * cell, side * cell, 3), dtype=np.uint8)
    row, col, margin = 2, 3, cell // 4
    repainted = pixels.copy()
    repainted[row * cell + margin : (row + 1) * cell - margin, col * cell + margin : (col + 1) * cell - margin] = 255 - (
        repainted[row * cell + margin : (row + 1) * cell - margin, col * cell + margin : (col + 1) * cell - margin]
    )
    before, after = (backbone.encode([Image.fromarray(p)])[0].projection for p in (pixels, repainted))
    changed = (before != after).any(dim=-1)
    expected = torch.zeros(side, side, dtype=torch.bool)
    expected[row, col] = True
    assert torch.equal(changed, expected)


def _own_tower_output(backbone, inputs):
    """The model's own vision tower on the adapter's pixels, read where its config says its projector
    reads: [tokens, C] in the tower's own token order."""
    model, config = backbone.model.model, backbone.model.config
    with torch.no_grad():
        if backbone.name == "qwen2_5_vl":
            return model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
        hidden = model.vision_tower(inputs["pixel_values"][0], output_hidden_states=True).hidden_states
    selected = hidden[config.vision_feature_layer][0]  # the base view: the first crop
    return selected[1:] if config.vision_feature_select_strategy == "default" else selected


def test_tower_is_the_models_own_vision_tower_output_at_the_layer_its_projector_reads(backbone):
    image = _image(2)
    (output,) = backbone.encode([image])
    own = _own_tower_output(backbone, backbone.model_inputs(image))
    rows, cols = output.grid.rows, output.grid.cols
    tower = output.tower.reshape(rows * cols, -1)
    if backbone.name == "qwen2_5_vl":  # window order -> raster order, 2x2 patches side by side
        visual = backbone.model.model.visual
        window_index, _ = get_vision_window_index(
            backbone.model_inputs(image)["image_grid_thw"], spatial_merge_size=2,
            window_size=visual.window_size, patch_size=visual.patch_size,
        )
        own = own.reshape(len(window_index), -1)[torch.argsort(window_index)]
        assert tower.shape[1] == 4 * visual.config.hidden_size
    else:
        assert tower.shape[1] == backbone.model.config.vision_config.hidden_size
    assert torch.equal(tower, own)


def test_the_projector_maps_the_tower_onto_the_projection(backbone):
    """The tower is what the projector receives, token for token: projecting it gives the LM input."""
    (output,) = backbone.encode([_image(3)])
    rows, cols = output.grid.rows, output.grid.cols
    with torch.no_grad():
        if backbone.name == "qwen2_5_vl":  # the merger's norm is per patch: split each token again
            merger = backbone.model.model.visual.merger
            projected = merger(output.tower.reshape(rows * cols * 4, -1))
        else:
            projected = backbone.model.model.multi_modal_projector(output.tower.reshape(rows * cols, -1))
    torch.testing.assert_close(projected, output.projection.reshape(rows * cols, -1), rtol=1e-5, atol=1e-5)


def test_llava_next_tower_is_clip_layer_minus_2_without_cls():
    backbone = _backbone("llava_next")
    config = backbone.model.config
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    image = _image(4)
    (output,) = backbone.encode([image])
    pixels = backbone.model_inputs(image)["pixel_values"][0]
    with torch.no_grad():
        hidden = backbone.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][0]
    side = backbone.side
    assert hidden.shape[0] == 1 + side * side and output.tower.shape[:2] == (side, side)
    assert torch.equal(output.tower.reshape(side * side, -1), hidden[1:])


def test_the_crops_view_has_no_tower():
    (output,) = _backbone("llava_onevision", view="crops").encode([_image(5, size=(100, 300))])
    assert output.tower is None
