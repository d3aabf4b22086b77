"""A feature store verifies itself: tampered or damaged files are refused naming the file, and resume
after a crash redoes only the damaged staged shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import imagekv.extract as extract_module
from imagekv.datasets.synthetic import synthesize
from imagekv.extract import extract, extract_store
from imagekv.features import METADATA_KEY, FeatureStore, StoreIntegrityError, read_header
from imagekv.images import load_rgb
from test_extract_store import REFCOCO, make_spec, store_bytes


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "refcoco"
    synthesize("refcoco", root, REFCOCO, seed=3)
    return root


@pytest.fixture(scope="module")
def pristine(refcoco, tmp_path_factory) -> Path:
    """A complete store (values and keys; images and texts), to copy and tamper with."""
    store = tmp_path_factory.mktemp("stores") / "store"
    extract_store(make_spec(refcoco, "llava_next", {"source": "tiny"}, store=["values", "keys"]), store)
    return store


def recording(decoded: list[str]):
    """load_rgb, noting each image it decodes."""
    return lambda path, **limits: decoded.append(path.stem) or load_rgb(path, **limits)


def read_everything(store_dir: Path) -> None:
    store = FeatureStore(store_dir)
    for image_id in store.image_ids:
        for representation in store.meta["representations"]:
            store.features(image_id, representation)
    for text in store.meta["texts"]:
        store.text(text)


def flip_data_bytes(store: Path) -> str:
    shard = store / "shards" / "00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(read_header(shard)[1]) + 10] ^= 0xFF  # a byte of the first tensor, after the header
    shard.write_bytes(bytes(data))
    return r"00001.safetensors: the bytes of tensor '\w+' rows of '\w+' do not match"


def flip_the_last_byte(store: Path) -> str:
    """The last layer's row of the last text: every row of every layer is covered."""
    shard = store / "shards" / "00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    return r"00002.safetensors: the bytes of tensor 'values' rows of '.+' do not match"


def swap_token_ranges(store: Path) -> str:
    manifest = json.loads((store / "manifest.json").read_text())
    first, second = sorted(
        image for image, entry in manifest["images"].items()
        if entry["shard"] == "00000.safetensors"
    )
    images = manifest["images"]
    images[first]["tokens"], images[second]["tokens"] = images[second]["tokens"], images[first]["tokens"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    return rf"manifest.json: the entries of images \['{first}', '{second}'\] disagree with shard .*00000.safetensors"


def swap_text_rows(store: Path) -> str:
    manifest = json.loads((store / "manifest.json").read_text())
    first, second = sorted(manifest["texts"])[:2]
    texts = manifest["texts"]
    texts[first]["row"], texts[second]["row"] = texts[second]["row"], texts[first]["row"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    return r"manifest.json: the entries of texts .* disagree with shard .*safetensors"


def move_image_to_another_shard(store: Path) -> str:
    manifest = json.loads((store / "manifest.json").read_text())
    image = sorted(manifest["images"])[0]
    manifest["images"][image]["shard"] = "00001.safetensors"
    (store / "manifest.json").write_text(json.dumps(manifest))
    return r"the entries of images \[.*\] disagree with shard"


def store_as_int8(store: Path) -> str:
    shard = store / "shards" / "00000.safetensors"
    metadata = {METADATA_KEY: json.dumps(read_header(shard)[0]["__metadata__"])}
    save_file({name: tensor.to(torch.int8) for name, tensor in load_file(shard).items()}, shard, metadata=metadata)
    return r"00000.safetensors holds tensors .*'I8'.*records.*'F16'"


def truncate(store: Path) -> str:
    shard = store / "shards" / "00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    return r"00002.safetensors is \d+ bytes; .*manifest.json records \d+ \(truncated"


def corrupt_header(store: Path) -> str:
    shard = store / "shards" / "00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[9:14] = b"#####"
    shard.write_bytes(bytes(data))
    return "00000.safetensors: corrupt safetensors header"


def garbage_header_length(store: Path) -> str:
    shard = store / "shards" / "00000.safetensors"
    shard.write_bytes(b"\xff" * 8 + shard.read_bytes()[8:])
    return "00000.safetensors: not a safetensors file"


def edit_header_metadata(store: Path) -> str:
    """Same size and tensors, other grids: only the header hash tells."""
    shard = store / "shards" / "00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data.replace(b'"kind\\":\\"images', b'"kind\\":\\"imageZ', 1))
    return "00000.safetensors: its safetensors header differs"


def delete_shard(store: Path) -> str:
    (store / "shards" / "00001.safetensors").unlink()
    return "00001.safetensors: the shard is missing"


def escape_shard_name(store: Path) -> str:
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"]["../../x.safetensors"] = manifest["shards"]["00000.safetensors"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    return r"manifest.json: bad shard names \['../../x.safetensors'\]"


TAMPERS = [flip_data_bytes, flip_the_last_byte, swap_token_ranges, swap_text_rows, move_image_to_another_shard, store_as_int8, truncate,
           corrupt_header, garbage_header_length, edit_header_metadata, delete_shard, escape_shard_name]


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__)
def test_a_tampered_store_is_refused_naming_the_file(pristine, tmp_path, tamper):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    read_everything(store)  # intact, and now hashed once in this process: tampering must still be found
    message = tamper(store)
    with pytest.raises(StoreIntegrityError, match=message):
        read_everything(store)


def test_resume_redoes_only_the_damaged_staged_shards(refcoco, tmp_path, monkeypatch):
    spec = make_spec(refcoco, "noise", {"grid": [4, 3], "width": 16}, images_per_shard=1)
    store = tmp_path / "store"
    save_shard, saved = extract_module._save_shard, []

    def crash_after_three_shards(path, tensors, meta):
        if len(saved) == 3:
            raise RuntimeError("simulated crash")
        saved.append(path.name)
        save_shard(path, tensors, meta)

    monkeypatch.setattr(extract_module, "_save_shard", crash_after_three_shards)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_store(spec, store)
    staged = tmp_path / ".store.partial" / "shards"
    assert saved == ["00000.safetensors", "00001.safetensors", "00002.safetensors"] and not store.exists()
    flip_data_bytes(staged.parent)  # 00001
    truncate(staged.parent)  # 00002
    kept = (staged / "00000.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(extract_module, "_save_shard", save_shard)

    decoded = []
    monkeypatch.setattr(extract_module, "load_rgb", recording(decoded))
    extract_store(spec, store)
    image_ids = FeatureStore(store).image_ids
    assert decoded == list(image_ids[1:]), "shard 00000 is kept, 00001 and 00002 are redone, 00003 done"
    assert (store / "shards" / "00000.safetensors").stat().st_mtime_ns == kept
    read_everything(store)
    extract(spec, tmp_path / "fresh" / "manifest.json")
    assert store_bytes(store / "manifest.json") == store_bytes(tmp_path / "fresh" / "manifest.json")


def test_a_staged_shard_without_its_record_is_redone(refcoco, tmp_path, monkeypatch):
    """A crash between a shard's rename and its record's: the shard cannot be trusted."""
    spec = make_spec(refcoco, "noise", {"grid": [4, 3], "width": 16})
    manifest = tmp_path / "store" / "manifest.json"
    extract(spec, manifest)
    (manifest.parent / "shards" / "00000.safetensors.json").unlink()
    decoded = []
    monkeypatch.setattr(extract_module, "load_rgb", recording(decoded))
    extract(spec, manifest)
    assert decoded == list(FeatureStore(manifest).image_ids[:2])


def truncate_manifest(store: Path) -> str:
    manifest = store / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:300])
    return "manifest.json: corrupt manifest"


def drop_shard_records(store: Path) -> str:
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["shards"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    return r"manifest.json: corrupt manifest, no valid \['shards'\]"


@pytest.mark.parametrize("tamper", [truncate_manifest, drop_shard_records], ids=lambda f: f.__name__)
def test_a_corrupt_manifest_is_refused_naming_it(pristine, tmp_path, tamper):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    message = tamper(store)
    with pytest.raises(StoreIntegrityError, match=message):
        FeatureStore(store)
