"""E4.3: the probes with some token positions excluded (SPEC E4.3), on the in-memory features of
test_probes (layer 3 perfect, layer 7 noise; 8 x 8 token grid), and the conditions of the rerun."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from smoke_config import SMOKE_CONFIG
from test_probes import CELLS, GRID, SIZE, MemorySource, make_episodes, pixels, rectangle_ids

from imagekv import plan
from imagekv.datasets.schema import CosegSet, KeypointPair, TextQuery, VideoClip
from imagekv.features import LayerView
from imagekv.interventions.masked_probes import exclusions
from imagekv.interventions.key_variance_run import flagged_layout_positions
from imagekv.probes import resolve_params, run_probe
from imagekv.probes.coseg import segment_set
from imagekv.probes.correspondence import predict_points
from imagekv.probes.features import token_labels
from imagekv.probes.fewshot_seg import query_probabilities, support_tokens
from imagekv.probes.temporal import propagate
from imagekv.probes.text_query_seg import query_scores

PERFECT = 0  # index of the perfect layer in MemorySource.layers


def cells(*flat: int) -> np.ndarray:
    mask = np.zeros(CELLS * CELLS, dtype=bool)
    mask[list(flat)] = True
    return mask


def object_cells(ids: np.ndarray, object_id: int = 1) -> np.ndarray:
    return (ids == object_id).ravel()


def at_centres(pixel_map: np.ndarray) -> np.ndarray:
    """[rows*cols]: a pixel map read at the cell centres, where upsampling keeps each token's own
    prediction (at cell borders bilinear upsampling blends neighbours)."""
    centre = SIZE // CELLS // 2
    return pixel_map[centre :: SIZE // CELLS, centre :: SIZE // CELLS].ravel()


def test_nothing_excluded_gives_the_unmasked_probe_of_that_layer():
    episodes, source = make_episodes(3)
    plain = run_probe("fewshot_seg", episodes, source, {})
    single = run_probe("fewshot_seg", episodes, LayerView(source, PERFECT, cells()), {})
    assert single == [row for row in plain if row["layer"] == source.layers[PERFECT]]


def test_fewshot_excluded_tokens_train_nothing_and_predict_background():
    episodes, source = make_episodes(1)
    episode = episodes[0]
    query_object = object_cells(source_ids(source, episode.query))
    excluded = cells(int(np.flatnonzero(query_object)[0]), 0, 1, 2)
    view = LayerView(source, PERFECT, excluded)
    features, _ = support_tokens(episode, view, resolve_params("fewshot_seg", {}))
    assert features.shape[1] == sum(int((usable & ~excluded).sum()) for usable in support_usable(episode))
    probabilities = query_probabilities(episode, view, resolve_params("fewshot_seg", {}))
    assert torch.all(probabilities[0, torch.from_numpy(excluded)] == 0)
    assert torch.all(probabilities[0, torch.from_numpy(query_object & ~excluded)] > 0.5)  # the rest still found


def support_usable(episode) -> list[np.ndarray]:
    return [token_labels(mask, GRID)[1] for mask in episode.support_masks]


def source_ids(source: MemorySource, image_id: str) -> np.ndarray:
    """The cell id map behind an image's perfect features."""
    return source.by_id[image_id][0, ..., : source.num_ids].argmax(-1).numpy()


def test_coseg_excluded_tokens_predict_background_and_leave_the_clusters():
    rng = np.random.default_rng(1)
    id_maps = {f"i{k}": rectangle_ids(rng) for k in range(3)}
    image_set = CosegSet("set", "c", tuple(id_maps), tuple(pixels(m) for m in id_maps.values()))
    source = MemorySource(id_maps, num_ids=2)
    excluded = cells(*range(0, 64, 9))  # the diagonal, partly inside the objects
    predictions = segment_set(image_set, LayerView(source, PERFECT, excluded), resolve_params("coseg", {"n_init": 3}))
    for prediction, ids in zip(predictions, id_maps.values()):
        assert (at_centres(prediction[0]) == object_cells(ids) & ~excluded).all()
    everything = np.ones(CELLS * CELLS, dtype=bool)
    with pytest.raises(ValueError, match="every token is excluded"):
        segment_set(image_set, LayerView(source, PERFECT, everything), resolve_params("coseg", {"n_init": 1}))


def test_text_query_excluded_tokens_score_zero_and_the_rest_is_renormalised():
    rng = np.random.default_rng(2)
    ids = rectangle_ids(rng, object_id=1)
    source = MemorySource({"im": ids}, num_ids=2)
    query = TextQuery("q", "im", "id=1", pixels((ids == 1).astype(np.uint8)))
    some_object_cell = int(np.flatnonzero(object_cells(ids))[0])
    excluded = cells(some_object_cell, 0)
    scores = query_scores(query, LayerView(source, PERFECT, excluded), "dot")[0]
    assert torch.all(scores[torch.from_numpy(excluded)] == 0)
    kept_object = torch.from_numpy(object_cells(ids) & ~excluded)
    assert torch.all(scores[kept_object] == 1.0)


def test_correspondence_never_picks_an_excluded_target_token():
    ids_s = np.zeros((CELLS, CELLS), dtype=int)
    ids_t = np.zeros((CELLS, CELLS), dtype=int)
    ids_s.flat[10], ids_t.flat[20], ids_t.flat[45] = 1, 1, 2
    source = MemorySource({"s": ids_s, "t": ids_t}, num_ids=3)
    points = GRID.centers()[[10]]
    pair = KeypointPair("p", "cat", "s", "t", points, points, ("0",), (0.0, 0.0, 64.0, 64.0))
    assert np.allclose(predict_points(pair, LayerView(source, PERFECT), points)[0, 0], GRID.centers()[20])
    predicted = predict_points(pair, LayerView(source, PERFECT, cells(20)), points)[0, 0]
    assert not np.allclose(predicted, GRID.centers()[20])
    everything = np.ones(CELLS * CELLS, dtype=bool)
    with pytest.raises(ValueError, match="every token of target"):
        predict_points(pair, LayerView(source, PERFECT, everything), points)


def test_temporal_excluded_tokens_are_no_candidates_and_predict_background():
    id_maps, frames = {}, []
    for t in range(4):
        ids = np.zeros((CELLS, CELLS), dtype=int)
        ids[2:5, 2:5] = 1
        id_maps[f"f{t}"] = ids
        frames.append(pixels(ids))
    clip = VideoClip("clip", tuple(id_maps), tuple(frames))
    source = MemorySource(id_maps, num_ids=2)
    params = resolve_params("temporal_corr", {"n_previous": 1})
    excluded = cells(2 * CELLS + 2, 3 * CELLS + 3)  # two object cells, in every frame
    for labels in propagate(clip, LayerView(source, PERFECT, excluded), params, num_labels=2):
        assert (at_centres(labels[0]) == object_cells(id_maps["f0"]) & ~excluded).all()
    # With every object token excluded there is nothing to propagate the object from.
    gone = LayerView(source, PERFECT, object_cells(id_maps["f0"]))
    assert all((labels[0] == 0).all() for labels in propagate(clip, gone, params, num_labels=2))


def test_exclusion_conditions_have_equal_counts_and_are_seeded():
    flagged = {5: torch.tensor([0, 3, 7]), 6: torch.tensor([1])}
    sets = exclusions(flagged, 16, ["none", "flagged", "random"], seed=0)
    assert sorted(sets) == [5, 6]
    for layer, positions in flagged.items():
        assert not sets[layer]["none"].any()
        assert np.flatnonzero(sets[layer]["flagged"]).tolist() == positions.tolist()
        assert sets[layer]["random"].sum() == len(positions)
    again = exclusions(flagged, 16, ["none", "flagged", "random"], seed=0)
    assert all((again[k]["random"] == sets[k]["random"]).all() for k in sets)
    with pytest.raises(ValueError, match="unknown masking condition"):
        exclusions(flagged, 16, ["none", "everything"], seed=0)


def test_a_layout_of_another_size_is_refused_naming_the_image():
    class Store:
        manifest_path = "store/manifest.json"

    source = MemorySource({"im": np.zeros((CELLS, CELLS), dtype=int)}, num_ids=2)
    source.store = Store()
    with pytest.raises(ValueError, match="'im' has a 8x8 grid.*layout of 10"):
        LayerView(source, PERFECT, np.zeros(10, dtype=bool)).excluded("im")


def test_the_rerun_reads_each_task_store_of_the_key_variance_layout():
    config = SMOKE_CONFIG
    spec = plan.masked_probes_spec(config, "llava_next")
    assert set(spec["tasks"]) == set(config["interventions"]["masked_probes"]["tasks"])
    prefix = config["interventions"]["key_variance"]["prefix"]
    assert spec["tasks"]["coseg"]["features"] == f"results/smoke/llava_next/msrc/features/{prefix}"
    assert spec["tasks"]["coseg"]["stored"] == "values"
    assert "data/synthetic/msrc" in plan.masked_probes_inputs(config, "llava_next")


@pytest.mark.slow
def test_smoke_rerun_masks_the_flagged_count_per_layer_in_every_task(reference_run):
    project, _ = reference_run
    results = pd.read_csv(project / "results/smoke/interventions/masked_probes.csv")
    assert set(results["task"]) == set(SMOKE_CONFIG["interventions"]["masked_probes"]["tasks"])
    for model, rows in results.groupby("model"):
        flags = json.loads((project / f"results/smoke/{model}/interventions/key_variance.json").read_text())
        count = dict(zip(flags["layers"], flags["flagged_count"]))
        masked = flagged_layout_positions(flags, SMOKE_CONFIG["interventions"]["masked_probes"]["layers"])
        assert set(rows["layer"]) == set(masked) and all(count[layer] for layer in masked)
        for (layer, condition), group in rows.groupby(["layer", "condition"]):
            assert set(group["excluded"]) == {0 if condition == "none" else count[layer]}, (model, layer, condition)
