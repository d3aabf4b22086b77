"""The six probes on constructed in-memory features.

Every probe test builds two layers: layer 0 holds perfect features (a token's feature is the
one-hot id of what covers its cell), layer 1 holds Gaussian noise. Objects are rectangles aligned
with the 8 x 8 token cells of 64 x 64 images, so perfect features can reach the metric's maximum at
pixel level. The chance level of each task is stated in its test.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score

from imagekv.datasets.schema import VOID, CosegSet, KeypointPair, SegEpisode, TextQuery, VideoClip
from imagekv.grid import TokenGrid
from imagekv.probes import probe_defaults, resolve_params, run_probe
from imagekv.probes import features as probe_features
from imagekv.probes.features import layer_blocks, solve_blocks, to_pixels, token_labels
from imagekv.probes.fewshot_seg import episode_counts, query_probabilities, support_tokens
from imagekv.probes.kmeans import kmeans
from imagekv.probes.logistic import fit_logistic
from imagekv.probes.metrics import intersection_union
from imagekv.probes.splits import split_samples

SIZE, CELLS = 64, 8
GRID = TokenGrid(CELLS, CELLS, SIZE, SIZE)
NOISE_DIM = 32
LAYERS = (3, 7)  # layer 3 perfect, layer 7 noise


class MemorySource:
    """An in-memory FeatureSource: per image a [rows, cols] id map, turned into one-hot features at
    the perfect layer and Gaussian noise at the noise layer."""

    def __init__(self, id_maps: dict[str, np.ndarray], num_ids: int, seed: int = 0):
        self.layers = LAYERS
        self.num_ids = num_ids
        self.dim = max(num_ids, NOISE_DIM)
        generator = torch.Generator().manual_seed(seed)
        self.by_id = {}
        for image_id, ids in sorted(id_maps.items()):
            perfect = torch.zeros(CELLS, CELLS, self.dim)
            perfect[..., :num_ids] = torch.nn.functional.one_hot(torch.from_numpy(ids).long(), num_ids).float()
            noise = torch.randn(CELLS, CELLS, self.dim, generator=generator)
            self.by_id[image_id] = torch.stack([perfect, noise])

    def grid(self, image_id: str) -> TokenGrid:
        return GRID

    def features(self, image_id: str) -> torch.Tensor:
        return self.by_id[image_id]

    def excluded(self, image_id: str) -> None:
        return None

    def text(self, text: str) -> torch.Tensor:
        """The one-hot of the id named by text "id=<k>" at the perfect layer, noise at the other."""
        perfect = torch.zeros(self.dim)
        perfect[int(text.split("=")[1])] = 1.0
        noise = torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(text.encode())))
        return torch.stack([perfect, noise])


def rectangle_ids(rng: np.random.Generator, object_id: int = 1, background: int = 0) -> np.ndarray:
    """[8, 8] cell id map holding one axis-aligned rectangle of 3..5 x 3..5 cells (large enough
    that bilinear upsampling rounding its corners costs under 5 % IoU)."""
    ids = np.full((CELLS, CELLS), background)
    h, w = rng.integers(3, 6, size=2)
    r, c = rng.integers(1, CELLS - h), rng.integers(1, CELLS - w)  # off the border ring
    ids[r : r + h, c : c + w] = object_id
    return ids


def pixels(ids: np.ndarray) -> np.ndarray:
    """Cell ids to a pixel map of the 64 x 64 image."""
    return np.kron(ids, np.ones((SIZE // CELLS, SIZE // CELLS), dtype=ids.dtype)).astype(np.uint8)


def value(rows: list[dict], metric: str, layer: int) -> float:
    (match,) = [r["value"] for r in rows if r["metric"] == metric and r["layer"] == layer]
    return match


def foreground_fraction(masks) -> float:
    return float(np.mean([np.mean(m == 1) for m in masks]))


# --- T1 -----------------------------------------------------------------------------------


def make_episodes(num: int, seed: int = 0) -> tuple[list[SegEpisode], MemorySource]:
    rng = np.random.default_rng(seed)
    id_maps, episodes = {}, []
    for e in range(num):
        names = [f"e{e}_{i}" for i in range(6)]
        for name in names:
            id_maps[name] = rectangle_ids(rng)
        masks = [pixels(id_maps[n]) for n in names]
        masks[1][0, :5] = VOID  # void pixels must be ignored, not counted as background
        episodes.append(
            SegEpisode(f"ep{e}", fold=e % 2, class_name=f"class{e % 3}", query=names[0], query_mask=masks[0],
                       support=tuple(names[1:]), support_masks=tuple(masks[1:]))
        )
    return episodes, MemorySource(id_maps, num_ids=2, seed=seed)


def test_fewshot_perfect_features_reach_max_and_noise_stays_at_chance():
    """Chance: a prediction independent of the query has expected IoU <= the foreground fraction f
    (reached by predicting everything), and FB-IoU near 0.5."""
    episodes, source = make_episodes(8)
    rows = run_probe("fewshot_seg", episodes, source, {})
    f = foreground_fraction([e.query_mask for e in episodes])
    assert value(rows, "miou", 3) >= 0.95
    assert value(rows, "fbiou", 3) >= 0.95
    assert value(rows, "miou", 7) <= f + 0.1
    assert value(rows, "fbiou", 7) <= 0.65
    assert {r["metric"] for r in rows} >= {"miou/fold=0", "miou/fold=1", "fbiou/fold=0"}


def random_problem(seed: int, layers: int = 4, n: int = 300, dim: int = 24):
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=generator) < 0.3).float()
    signal = torch.randn(layers, 1, dim, generator=generator) * torch.linspace(0.2, 3, layers)[:, None, None]
    features = torch.randn(layers, n, dim, generator=generator) + 2.0 + labels[None, :, None] * signal
    return torch.nn.functional.normalize(features, dim=-1), labels


@pytest.mark.parametrize(
    ("seed", "cache_block_bytes", "groups"),
    [(0, None, None), (1, None, None), (2, None, None), (0, 2 * 37 * 4 * 24 * 4, None),
     (1, None, [100, 0, 120, 80]), (2, 2 * 37 * 4 * 24 * 4, [100, 0, 120, 80])],
)
def test_batched_logistic_matches_sklearn_per_layer(seed, cache_block_bytes, groups, monkeypatch):
    """The optimum sklearn's estimator defines (fitted here at a tight tol: its L-BFGS at the default
    1e-4 can stop ~1e-3 away from it in probability) equals ours, at our default tol, within 1e-3 on
    every layer; also when the products run over
    chunks of 37 of the 300 tokens (a ragged last chunk), and with groups of tokens (images, one
    empty) that have their own offsets, which the preconditioner takes (a class within an image
    is one of its clusters)."""
    if cache_block_bytes is not None:
        monkeypatch.setattr(probe_features, "probe_device", lambda: torch.device("cpu"))
        monkeypatch.setattr(probe_features, "CACHE_BLOCK_BYTES", cache_block_bytes)
        assert probe_features.chunk_tokens(300, 4 * 24 * 4) == 37
    features, labels = random_problem(seed)
    if groups is not None:
        generator = torch.Generator().manual_seed(seed + 10)
        offsets = torch.cat([torch.randn(4, 1, 24, generator=generator).expand(4, size, 24) for size in groups], 1)
        features = torch.nn.functional.normalize(features + 0.5 * offsets, dim=-1)
    assert_matches_sklearn(features, labels, fit_logistic(features, labels, C=1.0, groups=groups))


def test_batched_logistic_matches_sklearn_with_an_image_of_one_class():
    """A support image without foreground: its positive cluster is empty, the preconditioner
    leaves it out."""
    features, labels = random_problem(4)
    labels[200:] = 0.0
    assert_matches_sklearn(features, labels, fit_logistic(features, labels, C=1.0, groups=[120, 80, 100]))


def assert_matches_sklearn(features: torch.Tensor, labels: torch.Tensor, fit) -> None:
    ours = torch.sigmoid(fit.logits(features)).numpy()
    for layer in range(features.shape[0]):
        reference = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10000)
        reference.fit(features[layer].double().numpy(), labels.numpy())
        expected = reference.predict_proba(features[layer].double().numpy())[:, 1]
        np.testing.assert_allclose(ours[layer], expected, atol=1e-3)


def test_logistic_groups_must_cover_the_tokens():
    features, labels = random_problem(0)
    with pytest.raises(ValueError, match="groups of 290 tokens for 300"):
        fit_logistic(features, labels, groups=[200, 90])


def non_separable_episodes(num: int, seed: int) -> tuple[list[SegEpisode], MemorySource]:
    """make_episodes with noise added to both layers: realistic, non-separable features."""
    generator = torch.Generator().manual_seed(seed)
    episodes, source = make_episodes(num, seed=seed)
    for image_id in list(source.by_id):
        noise = torch.randn(2, CELLS, CELLS, source.dim, generator=generator)
        source.by_id[image_id] = source.by_id[image_id] + 0.8 * noise
    return episodes, source


def test_fewshot_ious_equal_sklearn_pipeline():
    """The probe's pixel counts equal those of sklearn fitted per layer on the same tokens. Both
    solvers run to a tight tolerance: at the default ones, probabilities agree within 1e-3 (above),
    which can still flip the odd pixel whose probability is within 1e-3 of the threshold."""
    episodes, source = non_separable_episodes(3, seed=5)
    params = resolve_params("fewshot_seg", {"tol": 1e-8})
    for episode in episodes:
        features, labels = support_tokens(episode, source, params)
        query = torch.nn.functional.normalize(source.features(episode.query).reshape(2, -1, source.dim), dim=-1)
        for layer in range(2):
            model = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10000)
            model.fit(features[layer].double().numpy(), labels.numpy())
            probabilities = torch.from_numpy(model.predict_proba(query[layer].double().numpy())[:, 1]).float()
            pred = to_pixels(probabilities, GRID) >= 0.5
            expected = intersection_union(pred, episode.query_mask)
            counts = episode_counts(episode, source, params)
            assert (counts[0, layer], counts[1, layer]) == expected


def test_layer_blocks_partition_the_layers_within_the_cache_budget(monkeypatch):
    monkeypatch.setattr(probe_features, "probe_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(probe_features, "CACHE_BLOCK_BYTES", 3000)
    blocks = layer_blocks(10, layer_bytes=1000)
    assert [(b.start, b.stop) for b in blocks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert layer_blocks(9, layer_bytes=5000) == [slice(k, min(k + 2, 9)) for k in range(0, 9, 2)]  # never 1
    monkeypatch.setattr(probe_features, "CACHE_BLOCK_BYTES", 16 * 2**20)
    assert layer_blocks(28, layer_bytes=3645 * 512 * 4) == [slice(k, k + 2) for k in range(0, 28, 2)]
    monkeypatch.setattr(probe_features, "CACHE_BLOCK_BYTES", 4 * 2**20)
    assert layer_blocks(28, layer_bytes=3645 * 1024 * 4) == [slice(k, k + 2) for k in range(0, 28, 2)]
    monkeypatch.setattr(probe_features, "probe_device", lambda: torch.device("cuda"))
    assert layer_blocks(28, layer_bytes=3645 * 512 * 4) == [slice(0, 28)]  # no cache to fit on the GPU


def test_last_level_cache_bytes_reads_the_largest_data_cache(tmp_path):
    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "64K"),
                                                 (2, "Unified", "512K"), (3, "Unified", "8192K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert probe_features.last_level_cache_bytes(tmp_path) == 8 * 2**20
    (tmp_path / "index3" / "size").write_text("32M\n")
    assert probe_features.last_level_cache_bytes(tmp_path) == 32 * 2**20
    assert probe_features.last_level_cache_bytes(tmp_path / "absent") == probe_features.FALLBACK_CACHE_BYTES


def test_solve_blocks_solves_each_block_once_and_restores_the_thread_count(monkeypatch):
    monkeypatch.setattr(probe_features, "probe_device", lambda: torch.device("cpu"))
    threads = torch.get_num_threads()
    solved = []
    solve_blocks(lambda block: solved.append(block.start), [slice(k, k + 1) for k in range(5)])
    assert sorted(solved) == list(range(5))
    assert torch.get_num_threads() == threads

    def fail(block):
        raise ValueError(f"block {block.start}")

    with pytest.raises(ValueError, match="block"):
        solve_blocks(fail, [slice(0, 1), slice(1, 2)])
    assert torch.get_num_threads() == threads


def test_fewshot_probabilities_do_not_depend_on_the_layer_blocks(monkeypatch):
    """One block of all layers or one block per layer: the same classifiers, to solver tolerance."""
    episodes, source = non_separable_episodes(2, seed=3)
    params = resolve_params("fewshot_seg", {"tol": 1e-8})
    whole = [query_probabilities(e, source, params) for e in episodes]
    monkeypatch.setattr(probe_features, "CACHE_BLOCK_BYTES", 1)  # also products one token at a time
    monkeypatch.setattr(probe_features, "MIN_BLOCK_LAYERS", 1)
    for episode, expected in zip(episodes, whole, strict=True):
        torch.testing.assert_close(query_probabilities(episode, source, params), expected, atol=1e-4, rtol=0)


def test_token_labels_ignore_void_and_ambiguous_band():
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:8, :8] = VOID  # an all-void cell: unusable
    mask[:8, 8:12] = 1  # half covered: foreground at threshold 0.5, ambiguous in (0.25, 0.75)
    labels, usable = token_labels(mask, GRID)
    assert not usable[0] and usable[1] and labels[1] == 1 and labels[2] == 0
    _, usable = token_labels(mask, GRID, ambiguous=(0.25, 0.75))
    assert not usable[1] and usable[2]


# --- T2 -----------------------------------------------------------------------------------


def test_coseg_perfect_features_reach_max_and_noise_stays_at_chance():
    """Chance: random clusters give a foreground independent of the object: expected Jaccard <= f,
    the foreground fraction; precision near 0.5."""
    rng = np.random.default_rng(1)
    id_maps, sets = {}, []
    for s in range(3):
        names = [f"s{s}_{i}" for i in range(4)]
        for name in names:
            id_maps[name] = rectangle_ids(rng)
        sets.append(CosegSet(f"set{s}", f"class{s}", tuple(names), tuple(pixels(id_maps[n]) for n in names)))
    source = MemorySource(id_maps, num_ids=2)
    rows = run_probe("coseg", sets, source, {"n_init": 3})
    f = foreground_fraction([m for s in sets for m in s.masks])
    assert value(rows, "jaccard", 3) >= 0.95 and value(rows, "precision", 3) >= 0.95
    assert value(rows, "jaccard", 7) <= f + 0.1
    rows_k3 = run_probe("coseg", sets, source, {"n_init": 3, "k": 3})
    assert value(rows_k3, "jaccard", 3) >= 0.95


def test_batched_kmeans_finds_sklearn_partition():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 4, 8, generator=generator) * 5
    assignment = torch.randint(4, (200,), generator=generator)
    points = centres[:, assignment] + torch.randn(2, 200, 8, generator=generator)
    labels = kmeans(points, 4, n_init=5)
    for layer in range(2):
        reference = KMeans(4, n_init=10, random_state=0).fit_predict(points[layer].numpy())
        assert adjusted_rand_score(reference, labels[layer].numpy()) == 1.0


# --- T3 / T4 ------------------------------------------------------------------------------


def text_queries(num_images: int, per_image: int = 1, seed: int = 2) -> tuple[list[TextQuery], MemorySource]:
    rng = np.random.default_rng(seed)
    id_maps, queries = {}, []
    for i in range(num_images):
        object_id = 1 + i % 3
        id_maps[f"im{i}"] = rectangle_ids(rng, object_id=object_id)
        mask = pixels((id_maps[f"im{i}"] == object_id).astype(np.uint8))
        queries += [TextQuery(f"q{i}_{j}", f"im{i}", f"id={object_id}", mask, category=f"c{object_id}")
                    for j in range(per_image)]
    return queries, MemorySource(id_maps, num_ids=4)


@pytest.mark.parametrize("task", ["semantic_seg", "referring_seg"])
def test_text_query_perfect_features_reach_max_and_noise_stays_at_chance(task):
    """Chance: a region independent of the object has expected IoU <= f; pointing hits with
    probability f (the foreground fraction)."""
    queries, source = text_queries(12)
    rows = run_probe(task, queries, source, {})
    f = foreground_fraction([q.mask for q in queries])
    assert value(rows, "miou", 3) >= 0.95 and value(rows, "pointing", 3) == 1.0
    assert value(rows, "miou", 7) <= f + 0.1 and value(rows, "pointing", 7) <= f + 0.25


def test_splits_are_disjoint_seeded_and_keep_an_image_s_queries_together():
    queries, _ = text_queries(11, per_image=2)
    parts = split_samples(queries, seed=0, tune=3)
    images = {name: {q.image_id for q in part} for name, part in parts.items()}
    assert len(images["tune"]) == 3 and {len(images["validation"]), len(images["test"])} == {4}
    assert not (images["tune"] & images["validation"] or images["tune"] & images["test"]
                or images["validation"] & images["test"])
    assert sum(len(p) for p in parts.values()) == len(queries)
    assert split_samples(queries[::-1], seed=0, tune=3)["tune"][0].image_id in images["tune"]
    assert {q.image_id for q in split_samples(queries, seed=1, tune=3)["tune"]} != images["tune"]
    with pytest.raises(ValueError, match="11"):
        split_samples(queries, seed=0, tune=11)


@pytest.mark.parametrize("task", ["semantic_seg", "referring_seg"])
def test_tau_is_tuned_per_layer_on_held_out_images_only(task):
    """At the perfect layer the one-hot score map upsamples to a ramp across each object edge, so
    0.5 puts the mask edge on the cell edge: the best candidate. The tuning images are never scored."""
    queries, source = text_queries(12)
    spied = SpySource(source)
    params = {"tune_images": 4, "tune_thresholds": [0.3, 0.4, 0.5, 0.6, 0.7]}
    rows = run_probe(task, queries, spied, params, split_seed=0, held_out=True)
    tuned = {r["layer"]: r["tuned"]["threshold"] for r in rows}
    assert tuned[3] == 0.5 and tuned[7] in params["tune_thresholds"]
    assert value(rows, "miou", 3) >= 0.95
    # read once to tune, never to score; a scored image is read once, for all scored and its split
    tuning = {q.image_id for q in split_samples(queries, 0, tune=4)["tune"]}
    assert set(spied.reads.values()) == {1}
    assert set(spied.reads) == {q.image_id for q in queries} and tuning < set(spied.reads)
    counted = [r for r in rows if r["metric"].startswith("pointing") and r["layer"] == 3]
    assert {r["metric"]: r["n"] for r in counted} == {
        "pointing": 8, "pointing/split=validation": 4, "pointing/split=test": 4}


class SpySource:
    """A FeatureSource that records which images are read."""

    def __init__(self, source):
        self.source, self.layers, self.reads = source, source.layers, {}

    def features(self, image_id):
        self.reads[image_id] = self.reads.get(image_id, 0) + 1
        return self.source.features(image_id)

    def __getattr__(self, name):
        return getattr(self.source, name)


# --- T5 -----------------------------------------------------------------------------------


def test_correspondence_perfect_features_reach_max_and_noise_stays_at_chance():
    """Chance: a uniformly random target cell; its expected PCK is the fraction of cell centres
    within the threshold of each keypoint, computed below."""
    rng = np.random.default_rng(3)
    id_maps, pairs, chance = {}, [], []
    num_keypoints = 5
    for p in range(30):
        points = []
        for side in ("s", "t"):
            ids = np.zeros((CELLS, CELLS), dtype=int)
            cells = rng.choice(CELLS * CELLS, num_keypoints, replace=False)
            ids.flat[cells] = np.arange(1, num_keypoints + 1)
            id_maps[f"{side}{p}"] = ids
            points.append(GRID.centers()[cells] + rng.uniform(-2.5, 2.5, size=(num_keypoints, 2)))
        bbox = (0.0, 0.0, 40.0, 30.0)  # threshold 4 px at alpha 0.1, above the 3.5 px offsets
        pairs.append(KeypointPair(f"p{p}", f"cat{p % 2}", f"s{p}", f"t{p}", points[0], points[1],
                                  tuple(str(k) for k in range(num_keypoints)), bbox))
        distances = np.linalg.norm(GRID.centers()[None] - points[1][:, None], axis=-1)
        chance.extend((distances <= 4.0).mean(1))
    rows = run_probe("semantic_corr", pairs, MemorySource(id_maps, num_ids=num_keypoints + 1), {})
    assert value(rows, "pck@0.1", 3) == 1.0
    assert value(rows, "pck@0.1/category=cat0", 3) == 1.0
    assert abs(value(rows, "pck@0.1", 7) - np.mean(chance)) <= 0.08


# --- T6 -----------------------------------------------------------------------------------


def test_temporal_perfect_features_reach_max_and_noise_stays_at_chance():
    """Two objects, one moving a cell every other frame. Boundaries are matched within 3 px: bilinear
    upsampling of 8-px cells rounds the corners by about 2 px, more than the default 1 px tolerance
    of a 64 x 64 image. Chance: labels unrelated to the frame; an object of area fraction f then
    scores J of about f / (1 + f) at best, well under 0.5 here (the noise layer, whose top-k
    neighbours are mostly background, predicts background everywhere: J = 0)."""
    frames, id_maps = [], {}
    for t in range(6):
        ids = np.zeros((CELLS, CELLS), dtype=int)
        ids[0:3, 1 + t // 2 : 4 + t // 2] = 1
        ids[5:8, 4:7] = 2
        id_maps[f"f{t}"] = ids
        frames.append(pixels(ids))
    frames[2][10:14, 30:40] = VOID
    clip = VideoClip("clip", tuple(id_maps), tuple(frames))
    rows = run_probe("temporal_corr", [clip], MemorySource(id_maps, num_ids=3), {"n_previous": 2, "bound_th": 3})
    assert value(rows, "j", 3) >= 0.95 and value(rows, "f", 3) >= 0.95 and value(rows, "j&f", 3) >= 0.95
    assert value(rows, "j", 7) < 0.5
    assert {r["n"] for r in rows} == {2}


# --- registry -----------------------------------------------------------------------------


def test_unknown_parameter_and_task_are_named():
    with pytest.raises(KeyError, match="threshhold"):
        resolve_params("semantic_seg", {"threshhold": 0.4})
    with pytest.raises(KeyError, match="nope"):
        probe_defaults("nope")
