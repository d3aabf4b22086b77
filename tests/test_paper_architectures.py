"""The paper's three models at their real size, built on the `meta` device (no weights, no memory)
from the committed files of their pinned checkpoints (src/imagekv/models/checkpoints/, with their
sources): real config values, real tokenizer and chat template, the real processor settings at the
paper's resolutions. The token counts and grids the paper run will see; the paper path cannot run
here, this keeps it honest."""

import pytest
import torch
from PIL import Image
from transformers import LlavaNextConfig, LlavaOnevisionConfig, Qwen2_5_VLConfig

from imagekv.interventions.multiple_choice import prepare_question
from imagekv.models.prompts import processor_inputs
from imagekv.models.published import published_file, published_processor
from imagekv.models.registry import _REGISTRY, backbone_names

CONFIG_CLASSES = {"llava_onevision": LlavaOnevisionConfig, "llava_next": LlavaNextConfig, "qwen2_5_vl": Qwen2_5_VLConfig}
KV_WIDTH = {"llava_onevision": 4 * 128, "qwen2_5_vl": 4 * 128, "llava_next": 8 * 128}  # KV heads x head_dim (SPEC 2.1)
BASE_GRID = {"llava_onevision": (27, 27), "qwen2_5_vl": (27, 27), "llava_next": (24, 24)}


def paper_backbone(name: str, **cfg):
    config = published_file(name, "config.json")
    backbone_names()  # imports every adapter module
    adapter = _REGISTRY[name]
    with torch.device("meta"):
        model = adapter.model_class._from_config(CONFIG_CLASSES[name](**config))
    return adapter(model, published_processor(name), cfg), config


def _image_tokens(backbone, image):
    inputs = processor_inputs(backbone.processor, backbone.prompt_text(), [backbone.prepare_image(image)])
    count = int((inputs["input_ids"][0] == backbone.image_token_id).sum())
    return inputs, count


@pytest.mark.parametrize("name", ["llava_onevision", "qwen2_5_vl", "llava_next"])
def test_kv_width_and_depth_of_the_paper_models(name):
    backbone, config = paper_backbone(name)
    attention = backbone.decoder_layers[0].self_attn
    assert backbone.num_layers == config["text_config"]["num_hidden_layers"]
    assert attention.k_proj.out_features == attention.v_proj.out_features == KV_WIDTH[name]


@pytest.mark.parametrize(
    "name, size, tokens, crop_map",
    [
        # 729 base tokens, then one 384 px crop: 27 rows of 27 tokens and a newline.
        ("llava_onevision", (384, 384), 729 + 27 * 28, (27, 27)),
        # 576 base tokens, then the best pinpoint 336x672 unpadded back to the square: 24 x (24 + 1).
        ("llava_next", (336, 336), 576 + 24 * 25, (24, 24)),
    ],
)
def test_llava_token_counts_and_grids_at_the_paper_resolution(name, size, tokens, crop_map):
    backbone, _ = paper_backbone(name)
    image = Image.new("RGB", size, "gray")
    inputs, count = _image_tokens(backbone, image)
    assert count == tokens
    index, grid = backbone.grid_tokens(inputs, image, count)
    assert (grid.rows, grid.cols) == BASE_GRID[name] and index.tolist() == list(range(grid.rows * grid.cols))
    crops, _ = paper_backbone(name, view="crops")
    _, crop_grid = crops.grid_tokens(inputs, image, count)
    assert (crop_grid.rows, crop_grid.cols) == crop_map


def test_qwen_fixed_resolution_gives_27x27_whatever_the_image():
    backbone, _ = paper_backbone("qwen2_5_vl", fixed_grid=27)
    for size in ((640, 480), (300, 900)):
        image = Image.new("RGB", size, "gray")
        inputs, count = _image_tokens(backbone, image)
        _, grid = backbone.grid_tokens(inputs, image, count)
        assert count == 729 and (grid.rows, grid.cols) == BASE_GRID["qwen2_5_vl"]


def test_qwen_native_resolution_rounds_to_28_px_cells():
    backbone, _ = paper_backbone("qwen2_5_vl", resolution="native")
    image = Image.new("RGB", (640, 480), "gray")  # -> 644 x 476 px -> 23 x 17 merged cells
    inputs, count = _image_tokens(backbone, image)
    _, grid = backbone.grid_tokens(inputs, image, count)
    assert count == 17 * 23 and (grid.rows, grid.cols) == (17, 23)


def test_llava_next_fits_four_blink_images_in_its_context():
    backbone, config = paper_backbone("llava_next")
    images = backbone.question_images([Image.new("RGB", (640, 480), "gray")] * 4)
    context = config["text_config"]["max_position_embeddings"]
    _, layout = prepare_question(backbone.processor, "Which image is the odd one out?", images, max_length=context)
    assert layout.image_lengths == (576 + 24 * 25,) * 4  # base view, then one crop unpadded: 24 x (24 + 1)


def test_llava_onevision_gives_each_blink_image_its_base_view():
    backbone, config = paper_backbone("llava_onevision")
    images = [Image.new("RGB", (640, 480), "gray")] * 4
    context = config["text_config"]["max_position_embeddings"]
    _, layout = prepare_question(backbone.processor, "Which image is the odd one out?", images, max_length=context)
    assert layout.image_lengths == (27 * 27 + 1,) * 4  # multi-image mode: base view and one newline each
