"""The crops view's token map at the real geometry of both anyres models, checked against the
models' own packing: transformers' `pack_image_features` run on zero features with a newline of
ones, whose newline positions give the map's rows and columns, and the processor's own count of
image tokens. Sizes: 4,000 random photo sizes per model (fixed seed) and the sizes the former guess
from the token count got wrong (issue 14)."""

import inspect
import random

import pytest
import torch
from PIL import Image

from test_paper_architectures import paper_backbone

MODELS = ("llava_onevision", "llava_next")
GUESSED_WRONG = [(1049, 1036), (716, 701), (640, 200)]  # (height, width)


def photo_sizes(count: int = 4000, seed: int = 14) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return GUESSED_WRONG + [(rng.randint(100, 2000), rng.randint(100, 2000)) for _ in range(count)]


def packed_map_shape(model, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the crops map as the model's own `pack_image_features` lays it out."""
    config = model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    num_crops = inspect.getmodule(type(model)).image_size_to_num_patches(  # the base view included
        (height, width), config.image_grid_pinpoints, config.vision_config.image_size
    )
    if hasattr(config, "vision_aspect_ratio"):  # OneVision
        options = {"vision_aspect_ratio": config.vision_aspect_ratio}
    else:
        options = {"vision_feature_select_strategy": config.vision_feature_select_strategy}
    (packed,), _ = model.pack_image_features(
        [torch.zeros(num_crops, side * side, 1)], torch.tensor([[height, width]]), image_newline=torch.ones(1), **options
    )
    newlines = torch.nonzero(packed[side * side :, 0] == 1).squeeze(1)
    rows, cols = len(newlines), int(newlines[0])
    assert torch.equal(newlines, torch.arange(rows) * (cols + 1) + cols), "newlines not one after each row"
    return rows, cols


@pytest.fixture(scope="module", params=MODELS)
def crops_backbone(request):
    backbone, _ = paper_backbone(request.param, view="crops")
    return backbone


def test_crops_map_shape_equals_the_models_own_packing(crops_backbone):
    model, geometry = crops_backbone.model.model, crops_backbone.geometry
    sizes = photo_sizes()
    wrong = [
        (size, ours, truth)
        for size in sizes
        if (ours := geometry.crop_map_shape(*size)) != (truth := packed_map_shape(model, *size))
    ]
    assert wrong == [], f"{len(wrong)} of {len(sizes)} sizes wrong, e.g. (size, ours, packed) {wrong[:5]}"


def test_crops_map_and_base_view_make_the_processors_token_count(crops_backbone):
    sizes = photo_sizes()
    counts = crops_backbone.processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    base = crops_backbone.side**2
    made = [base + rows * (cols + 1) for rows, cols in map(lambda size: crops_backbone.geometry.crop_map_shape(*size), sizes)]
    assert made == counts


@pytest.mark.parametrize(
    "name, size, shape", [("llava_onevision", (1049, 1036), (81, 79)), ("llava_next", (716, 701), (48, 46)),
                          ("llava_next", (640, 200), (48, 16))],
)
def test_grid_tokens_skip_the_newlines_of_the_packed_map(name, size, shape):
    backbone, _ = paper_backbone(name, view="crops")
    height, width = size
    rows, cols = shape
    base = backbone.side**2
    inputs = {"image_sizes": torch.tensor([size])}
    index, grid = backbone.grid_tokens(inputs, Image.new("RGB", (width, height)), base + rows * (cols + 1))
    assert (grid.rows, grid.cols, grid.height, grid.width) == (rows, cols, height, width)
    newlines = base + torch.arange(rows) * (cols + 1) + cols
    assert len(index) == rows * cols and not torch.isin(index, newlines).any() and int(index.max()) < newlines[-1]
    with pytest.raises(ValueError, match=f"image of {width}x{height} px has {base + 1} image tokens"):
        backbone.grid_tokens(inputs, Image.new("RGB", (width, height)), base + 1)  # multi-image mode: no crops
