import io

import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.datasets.blink_markers import (
    CANDIDATE_LABELS,
    REFERENCE_LABEL,
    Marker,
    MarkerError,
    draw_marker,
    locate_markers,
    marker_footprint,
)
from imagekv.datasets.schema import BlinkItem
from imagekv.datasets.synthetic import blink as blink_twin
from imagekv.datasets.synthetic.draw import backdrop
from imagekv.grid import TokenGrid
from imagekv.interventions import not_surfaced_run
from imagekv.interventions.not_surfaced import MARKED_SUBTASKS, tokens_under


def jpeg_roundtrip(image: Image.Image, **options) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **options)
    return np.array(Image.open(buffer))


@pytest.mark.parametrize("seed", range(6))
def test_markers_drawn_like_the_publisher_are_found_where_they_were_drawn(seed):
    # Four lettered red rings on a noisy photo-like backdrop, saved as an ordinary JPEG (4:2:0).
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(192, 321)), int(rng.integers(192, 321)))
    image = Image.fromarray(backdrop(rng, size))
    reach = marker_footprint(size, "D")
    points = []
    while len(points) < 4:
        point = (float(rng.uniform(reach, size[1] - reach)), float(rng.uniform(reach, size[0] - reach)))
        if all(np.hypot(point[0] - x, point[1] - y) > 2 * reach for x, y in points):
            points.append(point)
    for label, point in zip(CANDIDATE_LABELS, points):
        draw_marker(image, point, label)
    found = locate_markers(jpeg_roundtrip(image), CANDIDATE_LABELS)
    for label, (x, y) in zip(CANDIDATE_LABELS, points):
        assert np.hypot(found[label].x - x, found[label].y - y) < 1.5, label


def test_every_marker_of_the_synthetic_correspondence_items_is_found(tmp_path):
    truth = blink_twin.write(tmp_path, {"subtasks": list(MARKED_SUBTASKS), "items_per_subtask": 4},
                             np.random.default_rng(0))
    assert len(truth.samples) == 12
    for item in truth.samples:
        assert item.choices == ("Point A", "Point B", "Point C", "Point D") and len(item.image_ids) == 2
        reference = locate_markers(truth.pixels[item.image_ids[0]], (REFERENCE_LABEL,))
        candidates = locate_markers(truth.pixels[item.image_ids[1]], CANDIDATE_LABELS)
        assert set(reference) == {REFERENCE_LABEL} and set(candidates) == set(CANDIDATE_LABELS)


def test_missing_or_unlabelled_rings_are_an_error():
    image = Image.fromarray(np.full((200, 200, 3), 128, dtype=np.uint8))
    draw_marker(image, (50.0, 50.0), "A")
    with pytest.raises(MarkerError, match="found 1 red ring"):
        locate_markers(np.array(image), CANDIDATE_LABELS)
    bare = Image.fromarray(np.full((200, 200, 3), 128, dtype=np.uint8))
    draw_marker(bare, (50.0, 50.0), "")
    draw_marker(bare, (150.0, 150.0), "B")
    with pytest.raises(MarkerError, match="no label"):
        locate_markers(np.array(bare), ("A", "B"))


def test_tokens_under_a_marker_are_the_cells_inside_its_ring():
    values = torch.arange(16.0).reshape(1, 4, 4, 1)  # token (r, c) holds 4r + c
    grid = TokenGrid(4, 4, 64, 64)  # 16-px cells, centres at 8, 24, 40, 56
    assert tokens_under(values, grid, Marker(30.0, 30.0, 4.0)).flatten().tolist() == [5.0]
    assert tokens_under(values, grid, Marker(32.0, 32.0, 12.0)).flatten().tolist() == [5.0, 6.0, 9.0, 10.0]


class MarkedStore:
    """Value tokens [layers, 4, 4, dim] and the 64x64-px grid of each image, as a FeatureStore serves them."""

    def __init__(self, values):
        self.values, self.layers = values, (3, 7)

    def features(self, image_id, representation):
        assert representation == "values"
        return self.values[image_id]

    def grid(self, image_id):
        return TokenGrid(4, 4, 64, 64)


def test_correspondence_readout_answers_with_the_point_whose_token_matches_the_reference():
    # The token under REF (cell (0, 0) of image 1) equals the token under marker C (cell (3, 1) of
    # image 2) at both layers; the tokens under A, B and D point elsewhere. Answer C; the model says A.
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 4, 4, 8, generator=generator), torch.randn(2, 4, 4, 8, generator=generator)
    second[:, 3, 1] = first[:, 0, 0]
    item = BlinkItem("q", "Semantic_Correspondence", "?", ("Point A", "Point B", "Point C", "Point D"), "C",
                     ("q/image_1", "q/image_2"))
    markers = {"q": [Marker(8, 8, 3), Marker(40, 8, 3), Marker(56, 40, 3), Marker(24, 56, 3), Marker(8, 24, 3)]}
    lost = BlinkItem("r", "Semantic_Correspondence", "?", item.choices, "A", ("r/image_1", "r/image_2"))
    store = MarkedStore({"q/image_1": first, "q/image_2": second})
    for kind in ("mean", "gram"):
        report = not_surfaced_run.subtask_report(store, [item, lost], ["A", "B"], kind, 0, markers | {"r": None})
        assert report["readout_accuracy"] == [0.5, 0.5]  # q right; r's markers were not found: wrong
        assert report["not_surfaced"] == [0.5, 0.5]
        assert report["markers_missing"] == 1
