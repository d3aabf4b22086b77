"""The paper's three models at their real size, built on the `meta` device (no weights, no memory)
from their real configuration values (src/imagekv/models/paper_configs/, with their source), with
the real processor settings at the paper's resolutions: the token counts and grids the paper run
will see. The paper path cannot run here; this keeps it honest."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    LlavaNextConfig,
    LlavaNextImageProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessor,
    Qwen2_5_VLConfig,
    Qwen2VLImageProcessor,
)

from imagekv.models.registry import _REGISTRY, backbone_names
from imagekv.models.tiny import build_tiny



def _spec(name: str) -> dict:
    return json.loads((Path(__file__).resolve().parents[1] / "src/imagekv/models/paper_configs" / f"{name}.json").read_text())


def _paper_processor(name: str, settings: dict):
    """The twin's processor (tokenizer and chat template) with the paper model's image settings."""
    _, processor = build_tiny(name)
    if name == "llava_onevision":
        processor.image_processor = LlavaOnevisionImageProcessor()  # its defaults are the 7B's settings
        processor.num_image_tokens = settings["num_image_tokens"]
    elif name == "llava_next":
        processor.image_processor = LlavaNextImageProcessor(
            size=settings["size"], crop_size=settings["crop_size"],
            image_grid_pinpoints=_spec(name)["config"]["image_grid_pinpoints"],
        )
        processor.patch_size = settings["patch_size"]
        processor.num_additional_image_tokens = settings["num_additional_image_tokens"]
    else:
        processor.image_processor = Qwen2VLImageProcessor(**settings)
    return processor


CONFIG_CLASSES = {"llava_onevision": LlavaOnevisionConfig, "llava_next": LlavaNextConfig, "qwen2_5_vl": Qwen2_5_VLConfig}


def paper_backbone(name: str, **cfg):
    spec = _spec(name)
    backbone_names()  # imports every adapter module
    adapter = _REGISTRY[name]
    with torch.device("meta"):
        model = adapter.model_class._from_config(CONFIG_CLASSES[name](**spec["config"]))
    return adapter(model, _paper_processor(name, spec["processor"]), cfg), spec


def _image_tokens(backbone, image):
    inputs = backbone.processor(
        text=backbone.prompt_text(), images=[backbone.prepare_image(image)], return_tensors="pt",
        add_special_tokens=False,
    )
    count = int((inputs["input_ids"][0] == backbone.image_token_id).sum())
    return inputs, count


@pytest.mark.parametrize("name", ["llava_onevision", "qwen2_5_vl", "llava_next"])
def test_kv_width_and_depth_of_the_paper_models(name):
    backbone, spec = paper_backbone(name)
    attention = backbone.decoder_layers[0].self_attn
    assert backbone.num_layers == spec["config"]["text_config"]["num_hidden_layers"]
    assert attention.k_proj.out_features == attention.v_proj.out_features == spec["expected"]["kv_width"]


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
    backbone, spec = paper_backbone(name)
    image = Image.new("RGB", size, "gray")
    inputs, count = _image_tokens(backbone, image)
    assert count == tokens
    index, grid = backbone.grid_tokens(inputs, image, count)
    assert [grid.rows, grid.cols] == spec["expected"]["base_grid"] and index.tolist() == list(range(grid.rows * grid.cols))
    crops, _ = paper_backbone(name, view="crops")
    _, crop_grid = crops.grid_tokens(inputs, image, count)
    assert (crop_grid.rows, crop_grid.cols) == crop_map


def test_qwen_fixed_resolution_gives_27x27_whatever_the_image():
    backbone, spec = paper_backbone("qwen2_5_vl", fixed_grid=27)
    for size in ((640, 480), (300, 900)):
        image = Image.new("RGB", size, "gray")
        inputs, count = _image_tokens(backbone, image)
        _, grid = backbone.grid_tokens(inputs, image, count)
        assert count == 729 and [grid.rows, grid.cols] == spec["expected"]["base_grid"]


def test_qwen_native_resolution_rounds_to_28_px_cells():
    backbone, _ = paper_backbone("qwen2_5_vl", resolution="native")
    image = Image.new("RGB", (640, 480), "gray")  # -> 644 x 476 px -> 23 x 17 merged cells
    inputs, count = _image_tokens(backbone, image)
    _, grid = backbone.grid_tokens(inputs, image, count)
    assert count == 17 * 23 and (grid.rows, grid.cols) == (17, 23)
