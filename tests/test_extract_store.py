"""Extraction runner and feature store: exact round trip, resume, invalidation, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import imagekv.extract as extract_module
from imagekv import plan
from imagekv.datasets import load_dataset
from imagekv.datasets.synthetic import synthesize
from imagekv.extract import extract, extract_store
from imagekv.features import PROJECTION_LAYER, STORE_FORMAT, TOWER_LAYER, FeatureStore
from imagekv.images import ImageFileError, load_rgb
from imagekv.models.registry import build_backbone
from smoke_config import SMOKE_CONFIG

REFCOCO = {"images": 5, "num_expressions": 12}


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "refcoco"
    synthesize("refcoco", root, REFCOCO, seed=3)
    return root


def make_spec(root: Path, model: str = "oracle", model_cfg: dict | None = None, **overrides) -> dict:
    spec = {
        "run": "test", "model": model, "model_cfg": model_cfg or {"grid": [4, 3]},
        "dataset": "refcoco", "dataset_root": str(root), "dataset_cfg": {},
        "prefix": "", "prefix_name": "none", "layers": "all", "store": ["values"], "store_format": STORE_FORMAT,
        "batch_size": 2, "device": "cpu", "dtype": "float32", "store_dtype": "float16", "images_per_shard": 2,
        "max_image_pixels": 40_000_000,
    }
    return {**spec, **overrides}


def store_bytes(manifest: Path) -> dict[str, bytes]:
    """Every file of a store (manifest and shards) by relative path."""
    files = [manifest, *sorted((manifest.parent / "shards").iterdir())]
    return {str(path.relative_to(manifest.parent)): path.read_bytes() for path in files}


@pytest.mark.parametrize(
    "model, model_cfg, store",
    [
        ("oracle", {"grid": [4, 3], "noise_std": 0.1}, ["values"]),
        ("siglip", {"source": "tiny"}, ["values"]),
        ("clip", {"source": "tiny"}, ["values"]),
        # Qwen2.5-VL at native resolution: every image its own grid, so a shard's token runs differ
        ("qwen2_5_vl", {"source": "tiny", "resolution": "native"}, ["values", "keys", "projection", "tower"]),
        # the anyres crops map: grids whose footprint is not the whole image
        ("llava_next", {"source": "tiny", "view": "crops"}, ["values"]),
    ],
)
def test_store_returns_exactly_what_the_backbone_gave_in_fp16(refcoco, tmp_path, model, model_cfg, store):
    spec = make_spec(refcoco, model, model_cfg, store=store)
    extract(spec, tmp_path / "manifest.json")
    store = FeatureStore(tmp_path / "manifest.json", open_shards=1)  # every shard change evicts
    dataset = load_dataset("refcoco", refcoco, {})
    backbone = build_backbone(model, model_cfg, device="cpu", dtype=torch.float32, dataset=dataset)
    refs = dataset.images()
    assert store.image_ids == tuple(ref.image_id for ref in refs) and len(refs) > 2
    outputs = backbone.encode_with_ids([load_rgb(ref.path) for ref in refs], [ref.image_id for ref in refs])
    for ref, output in zip(refs, outputs):
        for representation in store.meta["representations"]:
            got = store.features(ref.image_id, representation)
            expected = getattr(output, representation).half().float()
            assert got.dtype == torch.float32
            single_layer = representation in ("projection", "tower")
            assert torch.equal(got, expected.unsqueeze(0) if single_layer else expected)
        assert store.grid(ref.image_id) == output.grid
        assert store.layers == output.layers
    if model in ("qwen2_5_vl", "llava_next"):
        assert len({store.grid(image_id).num_tokens for image_id in store.image_ids}) > 1
    if model == "llava_next":
        assert any(store.grid(image_id).footprint is not None for image_id in store.image_ids)
    if "tower" in store.meta["representations"]:
        assert store.view("tower").layers == (TOWER_LAYER,) and store.view("projection").layers == (PROJECTION_LAYER,)
    texts = sorted(dataset.texts())
    if model not in ("siglip", "clip"):
        expected = backbone.encode_text(texts).half().float()
        assert torch.equal(torch.stack([store.text(text) for text in texts]), expected)
    else:
        with pytest.raises(KeyError, match="no text tokens"):
            store.text(texts[0])


def test_stored_bytes_are_the_same_every_run(refcoco, tmp_path):
    spec = make_spec(refcoco)
    extract(spec, tmp_path / "a" / "manifest.json")
    extract(spec, tmp_path / "b" / "manifest.json")
    assert store_bytes(tmp_path / "a" / "manifest.json") == store_bytes(tmp_path / "b" / "manifest.json")


def test_resume_after_a_crash_extracts_only_the_missing_images(refcoco, tmp_path, monkeypatch):
    spec = make_spec(refcoco, "noise", {"grid": [4, 3], "width": 16})
    manifest = tmp_path / "resumed" / "manifest.json"
    save_shard = extract_module._save_shard
    saved = []

    def crash_after_first_shard(path, tensors, meta):
        if saved:
            raise RuntimeError("simulated crash")
        saved.append(path.name)
        save_shard(path, tensors, meta)

    monkeypatch.setattr(extract_module, "_save_shard", crash_after_first_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(spec, manifest)
    assert not manifest.exists() and saved == ["00000.safetensors"]
    first_shard = (manifest.parent / "shards" / saved[0]).stat().st_mtime_ns
    monkeypatch.setattr(extract_module, "_save_shard", save_shard)

    decoded = []
    monkeypatch.setattr(
        extract_module, "load_rgb", lambda path, **limits: decoded.append(path.stem) or load_rgb(path, **limits)
    )
    extract(spec, manifest)
    all_ids = FeatureStore(manifest).image_ids
    assert decoded == list(all_ids[2:])  # the first shard's two images are not extracted again
    assert (manifest.parent / "shards" / saved[0]).stat().st_mtime_ns == first_shard

    extract(spec, tmp_path / "fresh" / "manifest.json")
    assert store_bytes(manifest) == store_bytes(tmp_path / "fresh" / "manifest.json")


def test_a_changed_spec_or_changed_image_clears_the_shards(refcoco, tmp_path):
    manifest = tmp_path / "store" / "manifest.json"
    extract(make_spec(refcoco, "noise", {"seed": 1}), manifest)
    changed = make_spec(refcoco, "noise", {"seed": 2})
    extract(changed, manifest)
    extract(changed, tmp_path / "fresh" / "manifest.json")
    assert store_bytes(manifest) == store_bytes(tmp_path / "fresh" / "manifest.json")

    root = tmp_path / "refcoco"
    shutil.copytree(refcoco, root)
    extract(make_spec(root, "siglip", {"source": "tiny"}), manifest)
    first_id = FeatureStore(manifest).image_ids[0]
    image_path = next(root.rglob(f"{first_id}.jpg"))
    Image.open(image_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image_path)
    before = FeatureStore(manifest).features(first_id, "values")
    extract(make_spec(root, "siglip", {"source": "tiny"}), manifest)
    assert not torch.equal(FeatureStore(manifest).features(first_id, "values"), before)


def test_a_bad_image_file_is_named_and_no_manifest_is_written(refcoco, tmp_path):
    root = tmp_path / "refcoco"
    shutil.copytree(refcoco, root)
    manifest = tmp_path / "store" / "manifest.json"
    extract(make_spec(root), manifest)
    victim = sorted(root.rglob("*.jpg"))[-1]
    victim.write_bytes(victim.read_bytes()[:-300])  # the header stays readable: decoding fails
    with pytest.raises(ImageFileError, match=str(victim)):
        extract(make_spec(root), manifest)
    assert not manifest.exists()


def test_a_too_small_image_is_refused_with_its_name(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("L", (40, 8)).save(path)
    with pytest.raises(ImageFileError, match="tiny.png is 40x8"):
        load_rgb(path)
    assert load_rgb(path, min_side=8).mode == "RGB"


@pytest.mark.parametrize(
    "key, value",
    [("device", "tpu"), ("dtype", "int8"), ("store", ["logits"]), ("images_per_shard", 0), ("store_format", 1)],
)
def test_bad_spec_values_are_named(refcoco, tmp_path, key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        extract(make_spec(refcoco, **{key: value}), tmp_path / "manifest.json")


def test_a_vlm_store_holds_every_layer_and_refuses_one_beyond_its_depth(refcoco, tmp_path):
    twin = {"source": "tiny"}
    store_dir = tmp_path / "store"
    extract_store(make_spec(refcoco, "llava_next", twin, store=["values", "keys", "projection"]), store_dir)
    store = FeatureStore(store_dir)
    assert store.layers == (0, 1, 2, 3) and store.grid(store.image_ids[0]).rows == 8
    assert "<image>" in store.meta["prompt"]
    with pytest.raises(ValueError, match=r"'layers' holds \[4\]"):
        extract(make_spec(refcoco, "llava_next", twin, layers=[1, 4]), tmp_path / "other" / "manifest.json")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_and_palette_files_become_rgb(tmp_path, mode):
    path = tmp_path / f"image-{mode}.png"
    Image.new(mode, (30, 20)).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (30, 20)


def test_a_store_of_another_format_is_refused_by_name(refcoco, tmp_path):
    manifest = tmp_path / "store" / "manifest.json"
    extract(make_spec(refcoco), manifest)
    meta = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({key: value for key, value in meta.items() if key != "format"}))
    with pytest.raises(ValueError, match=r"manifest.json is a feature store of format 1.*extract it again"):
        FeatureStore(manifest)


def test_the_workflow_asks_every_extraction_for_the_current_store_format():
    """The format is in the rule's params: a new store layout reruns extraction and changes its cache key."""
    spec = plan.extraction_spec(SMOKE_CONFIG, "llava_onevision", "pascal5i", "none")
    assert spec["store_format"] == STORE_FORMAT
