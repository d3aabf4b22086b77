"""The anyres token maps at the real geometry of both models (tests/test_paper_architectures.py),
checked against the models' own code: transformers' `pack_image_features` run on features that
hold each token's place in the padded map, with a newline of -1 (its newline positions give the
map's rows and columns, its first token where unpadding cut), the processor's own count of image
tokens, and the image processor's own canvas. Sizes: 4,000 random photo sizes per model (fixed
seed) and the sizes the former guess from the token count got wrong (issue 14)."""

import functools
import inspect
import random

import pytest
import torch
from PIL import Image

from imagekv.grid import TokenGrid
from test_paper_architectures import paper_backbone

MODELS = ("llava_onevision", "llava_next")
GUESSED_WRONG = [(1049, 1036), (716, 701), (640, 200)]  # (height, width)


def photo_sizes(count: int = 4000, seed: int = 14) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return GUESSED_WRONG + [(rng.randint(100, 2000), rng.randint(100, 2000)) for _ in range(count)]


def packed_map(model, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, cols) of the crops map as the model's own `pack_image_features` lays it out, and the
    (row, col) in the padded map of its first token; the features say where each token comes from."""
    config = model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    crop_rows, crop_cols = inspect.getmodule(type(model)).get_anyres_image_grid_shape(
        (height, width), config.image_grid_pinpoints, config.vision_config.image_size
    )
    features = _crops_features(crop_rows, crop_cols, side)
    if hasattr(config, "vision_aspect_ratio"):  # OneVision
        options = {"vision_aspect_ratio": config.vision_aspect_ratio}
    else:
        options = {"vision_feature_select_strategy": config.vision_feature_select_strategy}
    (packed,), _ = model.pack_image_features(
        [features], torch.tensor([[height, width]]), image_newline=torch.full((2,), -1.0), **options
    )
    newlines = torch.nonzero(packed[side * side :, 0] == -1).squeeze(1)
    rows, cols = len(newlines), int(newlines[0])
    assert torch.equal(newlines, torch.arange(rows) * (cols + 1) + cols), "newlines not one after each row"
    first = packed[side * side]
    return (rows, cols), (int(first[0]), int(first[1]))


@functools.cache
def _crops_features(crop_rows: int, crop_cols: int, side: int) -> torch.Tensor:
    """[1 + crops, side*side, 2]: the base view (zeros), then per crop token its (row, col) in the
    padded map, crops in raster order as the image processor cuts them."""
    row, col = torch.meshgrid(torch.arange(crop_rows * side), torch.arange(crop_cols * side), indexing="ij")
    crops = torch.stack([row, col], -1).reshape(crop_rows, side, crop_cols, side, 2).transpose(1, 2)
    return torch.cat([torch.zeros(1, side * side, 2), crops.reshape(-1, side * side, 2).float()])


@pytest.fixture(scope="module", params=MODELS)
def crops_backbone(request):
    backbone, _ = paper_backbone(request.param, view="crops")
    return backbone


def test_crops_map_shape_equals_the_models_own_packing(crops_backbone):
    model, geometry = crops_backbone.model.model, crops_backbone.geometry
    sizes = photo_sizes()
    wrong, spans = [], 0
    for size in sizes:
        shape, first = packed_map(model, *size)
        if geometry.crop_map_shape(*size) != shape:
            wrong.append((size, geometry.crop_map_shape(*size), shape))
        (r0, r1), (c0, c1) = geometry.unpadded_span(*size)
        if (r1 - r0, c1 - c0) == shape:  # not resized: the first token shows where unpadding cut
            spans += 1
            if (r0, c0) != first:
                wrong.append((size, (r0, c0), first))
    assert wrong == [], f"{len(wrong)} of {len(sizes)} sizes wrong, e.g. (size, ours, packed) {wrong[:5]}"
    assert spans > len(sizes) // 2


def test_crops_map_and_base_view_make_the_processors_token_count(crops_backbone):
    sizes = photo_sizes()
    counts = crops_backbone.processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    base = crops_backbone.side**2
    shapes = [crops_backbone.geometry.crop_map_shape(*size) for size in sizes]
    made = [base + rows * (cols + 1) for rows, cols in shapes]
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


def test_an_image_whose_crops_map_unpads_to_nothing_is_named():
    """LLaVA-NeXT, 2000 x 10 px: across 72 token columns the image fills 0.36 of the 24 token rows,
    so unpadding drops them all."""
    backbone, _ = paper_backbone("llava_next", view="crops")
    with pytest.raises(ValueError, match="image of 2000x10 px unpads to an empty 0x72 crops map"):
        backbone.grid_tokens({"image_sizes": torch.tensor([[10, 2000]])}, Image.new("RGB", (2000, 10)), 576)


@pytest.mark.parametrize("name", MODELS)
def test_the_image_lies_on_the_canvas_where_the_geometry_puts_it(name):
    """A white image through the model's own image processor: the non-padding pixels of its crops,
    tiled back into the canvas, are the resized image, centred."""
    backbone, _ = paper_backbone(name, view="crops")
    geometry = backbone.geometry
    for height, width in photo_sizes(count=5, seed=5):
        pixels = backbone.processor.image_processor(Image.new("RGB", (width, height), "white"), return_tensors="pt")
        canvas_h, canvas_w = geometry.canvas(height, width)
        per_col = canvas_w // geometry.crop
        crops = pixels["pixel_values"][0, 1 : 1 + per_col * (canvas_h // geometry.crop), 0]
        canvas = crops.reshape(-1, per_col, geometry.crop, geometry.crop).transpose(1, 2).reshape(canvas_h, canvas_w)
        image = canvas > canvas.min() + (canvas.max() - canvas.min()) / 2
        rows, cols = torch.nonzero(image.any(1)).squeeze(1), torch.nonzero(image.any(0)).squeeze(1)
        resized_h, resized_w = geometry.resized(height, width)
        assert (len(rows), len(cols)) == (resized_h, resized_w) == (int(image.sum(0).max()), int(image.sum(1).max()))
        assert (int(rows[0]), int(cols[0])) == ((canvas_h - resized_h) // 2, (canvas_w - resized_w) // 2)


def test_the_crops_grid_tiles_the_kept_tokens_footprint():
    """LLaVA-NeXT, 200 px wide, 640 px high: canvas 672 x 336, the image resized to 672 x 210 and
    centred 63 px from the left; unpadding keeps token columns 4..19 (canvas px 56..280), which is
    6.67 px of padding past each side of the image."""
    backbone, _ = paper_backbone("llava_next", view="crops")
    inputs = {"image_sizes": torch.tensor([[640, 200]])}
    _, grid = backbone.grid_tokens(inputs, Image.new("RGB", (200, 640)), 576 + 48 * 17)
    x0, y0, x1, y1 = grid.box
    assert (grid.rows, grid.cols) == (48, 16) and (y0, y1) == (0, 640)
    assert x0 == pytest.approx(-7 * 200 / 210) and x1 == pytest.approx(217 * 200 / 210)
    assert TokenGrid(*grid.to_json()) == grid


@pytest.mark.parametrize("name, read", [("llava_onevision", 378 / 384), ("llava_next", 1.0)])
def test_the_base_view_footprint_is_what_the_patch_embedding_reads(name, read):
    """The squashed crop goes through a stride-`patch` convolution without padding: SigLIP's 27
    patches of 14 px read 378 of its 384 px, CLIP's 24 read all 336."""
    backbone, _ = paper_backbone(name)
    conv = backbone.model.model.vision_tower.get_input_embeddings()
    crop = backbone.model.config.vision_config.image_size
    assert conv.stride[0] * backbone.side == round(read * crop) and conv.padding in ("valid", (0, 0))
    _, grid = backbone.grid_tokens({}, Image.new("RGB", (640, 480)), backbone.side**2)
    assert grid.box == pytest.approx((0, 0, 640 * read, 480 * read))
