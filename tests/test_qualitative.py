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


def test_the_figure_has_a_row_per_probe_and_names_the_tuned_tau(tmp_path, monkeypatch):
    from imagekv.figures import qualitative as figure
    from imagekv.io import write_json

    image, mask = np.zeros((8, 8, 3), dtype=np.uint8), np.eye(8, dtype=np.uint8)
    model, sources = "llava_onevision", ["llava_onevision", "llava_onevision projection", "siglip"]
    arrays = {}
    for task in ("fewshot_seg", "coseg", "semantic_seg", "referring_seg", "temporal_corr"):
        arrays |= {f"{task}/image": image, f"{task}/truth": mask}
        for source in sources[:1] if task in ("semantic_seg", "referring_seg") else sources:
            arrays[f"{task}/pred/{source}"] = mask
    points = np.array([[1.0, 2.0]])
    arrays |= {"semantic_corr/source_image": image, "semantic_corr/target_image": image,
               "semantic_corr/source_points": points, "semantic_corr/target_points": points}
    for source in sources:
        arrays |= {f"semantic_corr/pred/{source}": points, f"semantic_corr/hits/{source}": np.ones(1, bool)}
    np.savez(tmp_path / "examples.npz", **arrays)
    tuned = {"tune_images": 2, "threshold": 0.7}
    write_json(tmp_path / "examples.json", {
        "model": model, "layers": dict.fromkeys(figure.TASK_ORDER, 3),
        "params": {task: tuned if task in ("semantic_seg", "referring_seg") else {} for task in figure.TASK_ORDER},
        "texts": {"semantic_seg": "dog", "referring_seg": "the left dog"}})
    drawn = []
    monkeypatch.setattr(figure, "save", lambda fig, outputs, provenance: drawn.append(fig))
    figure.plot(tmp_path / "examples.npz", [tmp_path / "q.png"], "smoke", "smoke")
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 * figure.COLUMNS  # one row per probe
    assert titles.count("ground truth") == 5 and "source keypoints" in titles
    assert sum("tau 0.7" in title for title in titles) == 2  # T3 and T4 predictions, at the tuned tau
    assert any('"the left dog"' in title for title in titles)
