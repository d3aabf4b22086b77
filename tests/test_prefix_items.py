"""E5 per-item prefixes (issue 17.1): stores keyed per query, probes reading their own item's
values, text queries held fixed, the in-context variant, the paired-bootstrap gains."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from imagekv import plan
from imagekv.datasets import load_dataset
from imagekv.datasets.synthetic import synthesize
from imagekv.extract import extract
from imagekv.features import STORE_FORMAT, FeatureStore, StoreIntegrityError
from imagekv.images import load_rgb
from imagekv.interventions.prefix import best_gain_bootstrap, prefix_gains, source_of
from imagekv.models.registry import build_backbone
from imagekv.prefixes import fill, item_key, item_samples, template_fields
from imagekv.probes.features import token_features

MODEL, MODEL_CFG = "llava_onevision", {"source": "tiny"}
TEMPLATE = "Find: {text}.\n"


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "refcoco"
    synthesize("refcoco", root, {"images": 2, "num_expressions": 5}, seed=3)
    return root


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(MODEL, MODEL_CFG, device="cpu", dtype=torch.float32)


def spec(root: Path, prefix: str, per_item: bool) -> dict:
    spec = {
        "run": "test", "model": MODEL, "model_cfg": MODEL_CFG, "dataset": "refcoco", "dataset_root": str(root),
        "dataset_cfg": {}, "prefix": prefix, "prefix_name": "find" if per_item else "x", "layers": "all",
        "store": ["values"], "store_format": STORE_FORMAT, "batch_size": 2, "device": "cpu", "dtype": "float32",
        "store_dtype": "float16", "images_per_shard": 2, "max_image_pixels": 40_000_000,
    }
    return spec | {"per_item": True} if per_item else spec


@pytest.fixture(scope="module")
def stores(refcoco, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stores")
    paths = {"none": folder / "none", "task": folder / "task", "find": folder / "find"}
    extract(spec(refcoco, "", False), paths["none"] / "manifest.json")
    extract(spec(refcoco, "Look closely.\n", False), paths["task"] / "manifest.json")
    extract(spec(refcoco, TEMPLATE, True), paths["find"] / "manifest.json")
    return paths


def test_each_query_reads_the_values_extracted_with_its_own_prefix(refcoco, stores, backbone):
    dataset = load_dataset("refcoco", refcoco, {})
    queries = list(dataset.samples())
    store = FeatureStore(stores["find"])
    assert store.image_ids == tuple(sorted(item_key(q) for q in queries))
    assert len(store.image_ids) > len(dataset.images())  # images with several expressions: one store key each
    by_image: dict[str, list] = {}
    for query in item_samples(queries, in_context=False):
        by_image.setdefault(query.image_id, []).append(query)
    image_id, (first, second, *_) = next((i, qs) for i, qs in by_image.items() if len({q.text for q in qs}) > 1)
    image = load_rgb(dict((r.image_id, r.path) for r in dataset.images())[image_id])
    view = store.view("values")
    for query in (first, second):
        assert query.features_key == item_key(query) and store.meta["items"][query.features_key]["prefix"] == \
            f"Find: {query.text}.\n"
        (output, in_context), = backbone.encode_items([image], [fill(TEMPLATE, query)], [query.text])
        assert torch.equal(token_features(view, query.features_key, normalize=False),
                           output.values.half().float().flatten(1, 2))
        assert torch.equal(store.text(query.features_key), in_context.half().float())
    assert not torch.equal(view.features(first.features_key)[1:], view.features(second.features_key)[1:])
    # layer 0 cannot change with a prefix: a layer-0 value depends only on its token's own embedding
    none = FeatureStore(stores["none"]).view("values")
    assert torch.allclose(view.features(first.features_key)[0], none.features(image_id)[0], atol=1e-3)


def test_the_in_context_query_reads_the_item_s_own_value(stores, refcoco):
    queries = item_samples(load_dataset("refcoco", refcoco, {}).samples(), in_context=True)
    store = FeatureStore(stores["find"])
    assert all(q.text_key == q.features_key and q.text_key in store.meta["texts"] for q in queries)


def test_a_changed_item_prefix_in_the_manifest_is_refused(stores, tmp_path):
    copy_dir = tmp_path / "store"
    shutil.copytree(stores["find"], copy_dir)
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    key = sorted(manifest["items"])[0]
    manifest["items"][key]["prefix"] = "Find: something else.\n"
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreIntegrityError, match="per-item prefixes"):
        FeatureStore(copy_dir).features(key, "values")


def test_the_fixed_query_condition_reads_the_no_prefix_text_values(stores, refcoco, backbone):
    assert FeatureStore(stores["task"]).meta["texts"] == {}  # a prefix store keeps no text queries
    texts = load_dataset("refcoco", refcoco, {}).texts()
    expected = backbone.encode_text(texts[:2]).half().float()  # text-only, no prefix
    for features in (stores["task"], stores["find"]):
        source = source_of({"features": str(features), "queries": str(stores["none"])})
        for text, value in zip(texts[:2], expected):
            assert torch.equal(source.text(text), value)


def test_the_plan_pairs_every_condition_with_its_store_and_queries():
    with open("config/config.yaml", encoding="utf-8") as handle:
        smoke = yaml.safe_load(handle)
    conditions = {c["label"]: c for c in plan.prefix_conditions(smoke, "qwen2_5_vl", "referring_seg")}
    none_store = "results/smoke/qwen2_5_vl/refcoco/features/none"
    assert set(conditions) == {"none", "task", "neutral", "find", "in_context:none", "in_context:find"}
    for label in ("task", "neutral", "find"):
        assert conditions[label]["queries"] == none_store
    assert conditions["find"]["features"] == "results/smoke/qwen2_5_vl/refcoco/item_features/find"
    assert conditions["in_context:find"]["in_context"] and conditions["in_context:find"]["queries"] is None
    coseg = {c["label"]: c for c in plan.prefix_conditions(smoke, "qwen2_5_vl", "coseg")}
    assert set(coseg) == {"none", "task", "neutral"} and all(c["queries"] is None for c in coseg.values())
    assert set(smoke["interventions"]["prefix"]["tasks"]) == set(smoke["probes"])  # all six probes
    assert ("imagenet_s", "find") in plan.item_extraction_jobs(smoke)
    bad = copy.deepcopy(smoke)
    bad["interventions"]["prefix"]["prefixes"] = ["task", "find"]
    with pytest.raises(KeyError, match="item_prefixes"):
        plan.interventions(bad)
    with pytest.raises(ValueError, match="class_name"):
        template_fields("Find: {class_name}.", "prefixes.find")


def test_the_gain_interval_is_paired_over_units(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.2, size=(40, 3))
    result = best_gain_bootstrap(base, base + 0.1, resamples=200, seed=0)
    assert result["gain"] == pytest.approx(0.1) and result["low"] == pytest.approx(0.1)
    assert result["high"] == pytest.approx(0.1)  # paired: a constant shift has no spread
    rows = [{"model": "m", "task": "coseg", "prefix": p, "unit": str(u), "layer": layer,
             "value": base[u, layer] + (0.1 if p == "task" else 0.0)}
            for p in ("none", "task") for u in range(40) for layer in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "units.csv", index=False)
    prefix_gains({"run": "t", "resamples": 100, "seed": 0}, [tmp_path / "units.csv"], tmp_path / "gains.csv")
    gains = pd.read_csv(tmp_path / "gains.csv")
    assert gains[["prefix", "baseline", "units"]].values.tolist() == [["task", "none", 40]]
    assert gains["gain"].item() == pytest.approx(0.1)
