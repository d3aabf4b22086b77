"""R-F3's example inputs: the best layer comes from the collected probe results."""

import pytest

from imagekv.qualitative import best_layer
from imagekv.results import tidy_rows, write_results

SPEC = {"run": "t", "model": "llava_onevision", "representation": "values", "task": "fewshot_seg",
        "dataset": "pascal5i", "prefix": "none", "params": {}}


def test_best_layer_is_the_first_layer_with_the_highest_headline_score(tmp_path):
    rows = [{"layer": layer, "metric": "miou", "value": value, "n": 4} for layer, value in enumerate([0.2, 0.5, 0.5, 0.1])]
    rows.append({"layer": 3, "metric": "fbiou", "value": 0.9, "n": 4})  # not the headline metric
    path = tmp_path / "probes.csv"
    write_results(tidy_rows(SPEC, rows, grid="8x8"), path)
    assert best_layer(path, "llava_onevision", "fewshot_seg") == 1
    with pytest.raises(ValueError, match="no semantic_corr rows"):
        best_layer(path, "llava_onevision", "semantic_corr")
