"""R-F3's example inputs: the best layer and its settings come from the collected probe results."""

import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.datasets.schema import ImageRef, TextQuery
from imagekv.grid import TokenGrid
from imagekv.qualitative import _first_scored, best_row, text_query_example
from imagekv.results import tidy_rows, write_results

SPEC = {"run": "t", "model": "llava_onevision", "representation": "values", "task": "fewshot_seg",
        "dataset": "pascal5i", "prefix": "none", "params": {}}


def test_best_layer_is_the_first_layer_with_the_highest_headline_score(tmp_path):
    rows = [{"layer": layer, "metric": "miou", "value": value, "n": 4} for layer, value in enumerate([0.2, 0.5, 0.5, 0.1])]
    rows.append({"layer": 3, "metric": "fbiou", "value": 0.9, "n": 4})  # not the headline metric
    path = tmp_path / "probes.csv"
    write_results(tidy_rows(SPEC, rows, grid="8x8"), path)
    assert best_row(path, "llava_onevision", "fewshot_seg") == (1, {})
    with pytest.raises(ValueError, match="no semantic_corr rows"):
        best_row(path, "llava_onevision", "semantic_corr")


def test_the_best_row_of_a_tuned_probe_gives_the_tau_tuned_at_its_layer(tmp_path):
    spec = SPEC | {"task": "semantic_seg", "dataset": "imagenet_s", "params": {"tune_images": 2, "threshold": 0.5}}
    rows = [{"layer": layer, "metric": "miou", "value": value, "n": 4, "tuned": {"threshold": tau}}
            for layer, value, tau in [(0, 0.3, 0.2), (1, 0.6, 0.7), (2, 0.4, 0.4)]]
    path = tmp_path / "probes.csv"
    write_results(tidy_rows(spec, rows, grid="8x8"), path)
    assert best_row(path, "llava_onevision", "semantic_seg") == (1, {"threshold": 0.7, "tune_images": 2})


class OneImage:
    """A dataset of text queries on one saved image, as the examples read it."""

    def __init__(self, path, queries):
        self.path, self.queries = path, queries

    def images(self):
        return [ImageRef("img", self.path)]

    def samples(self):
        return iter(self.queries)


class LeftHalfSource:
    """A 4x4 grid of 2-d values: the left two columns point along the text's value, the rest across it."""

    layers = (5,)

    def grid(self, image_id):
        return TokenGrid(4, 4, 64, 64)

    def features(self, image_id):
        values = torch.zeros(1, 4, 4, 2)
        values[..., :2, 0], values[..., 2:, 1] = 1.0, 1.0
        return values

    def text(self, text):
        return torch.tensor([[1.0, 0.0]])

    def excluded(self, image_id):
        return None


def test_text_query_example_is_the_first_scored_query_thresholded_at_its_tau(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    left = np.zeros((64, 64), dtype=np.uint8)
    left[:, :32] = 1
    queries = [TextQuery(f"q{i}", "img", f"thing {i}", left) for i in range(3)]
    dataset = OneImage(tmp_path / "img.png", queries)
    params = {"tune_images": 1, "threshold": 0.5, "similarity": "dot"}
    # tune_images counts images: the one image of all three queries is the tuning split, so none is left
    with pytest.raises(ValueError, match="leave none"):
        _first_scored(dataset, params, split_seed=0)
    assert _first_scored(dataset, params | {"tune_images": 0}, split_seed=0) is queries[0]
    example = text_query_example(dataset, queries[0], {"m": LeftHalfSource()}, params)
    assert (example["pred/m"] == left).mean() > 0.9  # scores 1 on the left half, 0 on the right
    strict = text_query_example(dataset, queries[0], {"m": LeftHalfSource()}, params | {"threshold": 1.01})
    assert not strict["pred/m"].any()  # the tau of the row decides the mask
