"""Read a feature store written by `imagekv.extract`: per-image dense features, per-text values.

Shards are opened lazily and memory-mapped; only the token rows of the image or text asked for are
read, and at most `open_shards` shards stay open, so memory stays flat however many images a probe
walks through.

A store verifies itself. The manifest records each shard's size, the sha256 of the whole file, of
its safetensors header and of each tensor's bytes, and each tensor's dtype and shape. When a store
first opens a shard it checks the size, the header and every token range and text row the
manifest gives against the keys and grids the shard itself holds; the first read of a tensor in a
process hashes its bytes. A mismatch raises StoreIntegrityError naming the shard.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from imagekv.grid import TokenGrid
from imagekv.io import read_json
from imagekv.plan import STORE_FORMAT  # 3: format 2 (one [layers, tokens, C] tensor per representation
# and shard) with each shard's record (sizes, hashes, dtypes, shapes) in the manifest

SHARD_DIR = "shards"  # beside the manifest
MANIFEST = "manifest.json"
PROJECTION_LAYER = -1  # layer label of the projector output: the LM's input, before layer 0
METADATA_KEY = "imagekv"  # the shard's one metadata entry: safetensors writes several in random order
RECORD_SUFFIX = ".json"  # shards/NNNNN.safetensors.json: the shard's record, written just after it
SHARD_NAME = re.compile(r"\d{5}\.safetensors")
# safetensors' names of the stored dtypes (https://github.com/huggingface/safetensors, format spec)
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
CHUNK_BYTES = 1 << 22
# (path, inode, size, mtime, tensor, sha256) of tensors already hashed in this process
_VERIFIED_TENSORS: set[tuple] = set()


class StoreIntegrityError(ValueError):
    """A feature store whose files disagree with its manifest; the message names the file."""


def record_path(shard: Path) -> Path:
    return shard.with_name(shard.name + RECORD_SUFFIX)


def read_header(path: Path) -> tuple[dict, bytes]:
    """The parsed safetensors header of the shard at `path`, and its raw bytes (length prefix included)."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= MAX_HEADER_BYTES:
            raise StoreIntegrityError(f"{path}: not a safetensors file (header length {length})")
        raw = handle.read(length)
    if len(raw) != length:
        raise StoreIntegrityError(f"{path}: truncated inside its safetensors header")
    try:
        header = json.loads(raw)
        metadata = json.loads(header.get("__metadata__", {})[METADATA_KEY])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise StoreIntegrityError(f"{path}: corrupt safetensors header ({error})") from error
    if not isinstance(metadata, dict):
        raise StoreIntegrityError(f"{path}: corrupt safetensors header (metadata is not an object)")
    header["__metadata__"] = metadata
    return header, prefix + raw


def read_shard_metadata(path: Path) -> dict:
    """The facts the extraction stored in a shard: kind, keys in storage order, grids, layers, prompt."""
    return read_header(path)[0]["__metadata__"]


def shard_record(path: Path) -> dict:
    """What the manifest records of a shard, from one pass over its bytes."""
    header, raw = read_header(path)
    tensors = sorted(((name, entry) for name, entry in header.items() if name != "__metadata__"),
                     key=lambda item: item[1]["data_offsets"])
    whole, record = hashlib.sha256(raw), {}
    with open(path, "rb") as handle:
        handle.seek(len(raw))
        position = 0
        for name, entry in tensors:
            start, stop = entry["data_offsets"]
            if start != position:
                raise StoreIntegrityError(f"{path}: tensor {name!r} starts at byte {start}, expected {position}")
            digest = _hash_bytes(handle, stop - start, path, whole)
            record[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "sha256": digest}
            position = stop
        if handle.read(1):
            raise StoreIntegrityError(f"{path}: bytes after its last tensor")
    return {"size": len(raw) + position, "sha256": whole.hexdigest(),
            "header_sha256": hashlib.sha256(raw).hexdigest(), "tensors": record}


def _dtypes_and_shapes(tensors: dict) -> dict:
    return {name: {"dtype": entry["dtype"], "shape": entry["shape"]} for name, entry in tensors.items()}


def _hash_bytes(handle, count: int, path: Path, *also) -> str:
    digest = hashlib.sha256()
    while count > 0:
        chunk = handle.read(min(count, CHUNK_BYTES))
        if not chunk:
            raise StoreIntegrityError(f"{path}: truncated (the file ends {count} bytes early)")
        for each in (digest, *also):
            each.update(chunk)
        count -= len(chunk)
    return digest.hexdigest()


class FeatureStore:
    def __init__(self, path: str | Path, open_shards: int = 4):
        """`path`: a store's folder (as the extraction rule outputs it) or its manifest."""
        path = Path(path)
        self.manifest_path = path / MANIFEST if path.is_dir() else path
        try:
            self.meta: dict = read_json(self.manifest_path)
        except ValueError as error:  # not JSON, not UTF-8
            raise StoreIntegrityError(f"{self.manifest_path}: corrupt manifest ({error})") from error
        if not isinstance(self.meta, dict) or self.meta.get("format") != STORE_FORMAT:
            found = self.meta.get("format", 1) if isinstance(self.meta, dict) else "unknown"
            raise ValueError(f"{self.manifest_path} is a feature store of format {found}; this "
                             f"code reads format {STORE_FORMAT}: delete the store and extract it again")
        missing = [key for key in ("layers", "images", "texts", "shards", "representations", "store_dtype")
                   if not isinstance(self.meta.get(key), (list, dict, str))]
        if missing:
            raise StoreIntegrityError(f"{self.manifest_path}: corrupt manifest, no valid {missing}")
        self.layers: tuple[int, ...] = tuple(self.meta["layers"])
        self.image_ids: tuple[str, ...] = tuple(sorted(self.meta["images"]))
        self._shard_dir = self.manifest_path.parent / SHARD_DIR
        self._open_shards = open_shards
        self._handles: OrderedDict[str, object] = OrderedDict()
        self._records: dict[str, dict] = self.meta["shards"]
        bad = sorted(name for name in self._records if not SHARD_NAME.fullmatch(name))
        if bad or self.meta["store_dtype"] not in SAFETENSORS_DTYPES:
            raise StoreIntegrityError(f"{self.manifest_path}: bad shard names {bad} or store_dtype "
                                      f"{self.meta['store_dtype']!r}; expected NNNNN.safetensors and one of "
                                      f"{sorted(SAFETENSORS_DTYPES)}")
        self._tensor_bytes: dict[str, dict[str, tuple[int, int]]] = {}  # per checked shard: file offsets

    def grid(self, image_id: str) -> TokenGrid:
        return TokenGrid(*self._image_entry(image_id)["grid"])

    def features(self, image_id: str, representation: str) -> torch.Tensor:
        """float32 [L, rows, cols, C]; L = len(layers) for values/keys, 1 for projection."""
        if representation not in self.meta["representations"]:
            raise KeyError(f"{self.manifest_path} stores {self.meta['representations']}, not {representation!r}")
        entry = self._image_entry(image_id)
        rows, cols = entry["grid"][:2]
        tokens = self._read(entry["shard"], representation, *entry["tokens"])  # [L, rows*cols, C]
        return tokens.reshape(len(tokens), rows, cols, -1).float()

    def text(self, text: str) -> torch.Tensor:
        """float32 [L, C]: the value of the text's last token at each stored layer."""
        entry = self.meta["texts"].get(text)
        if entry is None:
            raise KeyError(f"{self.manifest_path} holds no features of text {text!r} "
                           f"(backbone {self.meta['model']!r} may have no text tokens)")
        return self._read(entry["shard"], "values", entry["row"], entry["row"] + 1)[:, 0].float()

    def view(self, representation: str) -> "FeatureView":
        return FeatureView(self, representation)

    def grid_label(self) -> str:
        """"ROWSxCOLS" when every image has the same token grid, else "variable"."""
        shapes = {tuple(entry["grid"][:2]) for entry in self.meta["images"].values()}
        if len(shapes) != 1:
            return "variable"
        ((rows, cols),) = shapes
        return f"{rows}x{cols}"

    def _image_entry(self, image_id: str) -> dict:
        entry = self.meta["images"].get(image_id)
        if entry is None:
            raise KeyError(f"{self.manifest_path} holds no image {image_id!r}")
        return entry

    def _read(self, shard: str, tensor: str, start: int, stop: int) -> torch.Tensor:
        """Token rows start:stop of a shard's [layers, tokens, C] tensor; only those bytes are read
        (and, the first time in this process, the whole tensor's, to check its hash)."""
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            if shard not in self._tensor_bytes:
                self._tensor_bytes[shard] = self._check_shard(shard)
            self._handles[shard] = safe_open(str(self._shard_dir / shard), framework="pt")
            if len(self._handles) > self._open_shards:
                self._handles.popitem(last=False)
        self._check_tensor(shard, tensor)
        return self._handles[shard].get_slice(tensor)[:, start:stop]

    def _check_shard(self, shard: str) -> dict[str, tuple[int, int]]:
        """Size, header, dtypes, shapes, token ranges and text rows of `shard` against the manifest;
        returns where each tensor's bytes lie in the file."""
        path, record = self._shard_dir / shard, self._records.get(shard)
        if record is None:
            raise StoreIntegrityError(f"{self.manifest_path} refers to shard {shard} but records no hash of it")
        try:
            size = path.stat().st_size
        except FileNotFoundError as error:
            raise StoreIntegrityError(f"{path}: the shard is missing") from error
        header, raw = read_header(path)
        metadata = header.pop("__metadata__")
        stored, recorded = _dtypes_and_shapes(header), _dtypes_and_shapes(record["tensors"])
        dtype = SAFETENSORS_DTYPES[self.meta["store_dtype"]]
        if stored != recorded or any(entry["dtype"] != dtype for entry in stored.values()):
            raise StoreIntegrityError(f"{path} holds tensors {stored}; {self.manifest_path} records {recorded} "
                                      f"(store_dtype {self.meta['store_dtype']}, {dtype})")
        if size != record["size"]:
            raise StoreIntegrityError(f"{path} is {size} bytes; {self.manifest_path} records {record['size']} "
                                      "(truncated or rewritten)")
        if hashlib.sha256(raw).hexdigest() != record["header_sha256"]:
            raise StoreIntegrityError(
                f"{path}: its safetensors header differs from the one {self.manifest_path} records"
            )
        self._check_index(shard, path, metadata, {entry["shape"][1] for entry in stored.values()})
        return {name: (len(raw) + entry["data_offsets"][0], len(raw) + entry["data_offsets"][1])
                for name, entry in header.items()}

    def _check_index(self, shard: str, path: Path, metadata: dict, token_counts: set[int]) -> None:
        """The manifest's entries of `shard` must be exactly those its keys and grids give."""
        expected, start = {}, 0
        for row, key in enumerate(metadata["keys"]):
            if metadata["kind"] == "images":
                grid = metadata["grids"][key]
                expected[key] = {"grid": grid, "tokens": [start, start + grid[0] * grid[1]]}
                start += grid[0] * grid[1]
            else:
                expected[key] = {"row": row}
                start += 1
        entries = self.meta["images" if metadata["kind"] == "images" else "texts"]
        claimed = {key: {k: v for k, v in entry.items() if k != "shard"}
                   for key, entry in entries.items() if entry["shard"] == shard}
        wrong = sorted(key for key in expected.keys() | claimed.keys() if expected.get(key) != claimed.get(key))
        if wrong or token_counts != {start}:
            raise StoreIntegrityError(
                f"{self.manifest_path}: the entries of {metadata['kind']} {wrong[:5]} disagree with shard {path}, "
                f"which holds {len(expected)} {metadata['kind']} in {sorted(token_counts)} rows"
            )

    def _check_tensor(self, shard: str, tensor: str) -> None:
        """Hash a tensor's bytes against the manifest, once per file version and process."""
        path = self._shard_dir / shard
        expected = self._records[shard]["tensors"][tensor]["sha256"]
        status = path.stat()
        key = (str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns, tensor, expected)
        if key in _VERIFIED_TENSORS:
            return
        start, stop = self._tensor_bytes[shard][tensor]
        with open(path, "rb") as handle:
            handle.seek(start)
            actual = _hash_bytes(handle, stop - start, path)
        if actual != expected:
            raise StoreIntegrityError(f"{path}: the bytes of tensor {tensor!r} do not match the sha256 "
                                      f"{self.manifest_path} records; the shard is damaged: extract the store again")
        _VERIFIED_TENSORS.add(key)


class FeatureView:
    """One representation of a store, what a probe reads; `layers` labels the leading feature axis."""

    def __init__(self, store: FeatureStore, representation: str):
        self.store = store
        self.representation = representation
        self.layers = (PROJECTION_LAYER,) if representation == "projection" else store.layers
        self.image_ids = store.image_ids

    def features(self, image_id: str) -> torch.Tensor:
        return self.store.features(image_id, self.representation)

    def grid(self, image_id: str) -> TokenGrid:
        return self.store.grid(image_id)

    def text(self, text: str) -> torch.Tensor:
        """Text values live in the value space only; keys and projection have no text counterpart."""
        if self.representation != "values":
            raise KeyError(f"{self.store.manifest_path}: no text features in the {self.representation!r} space")
        return self.store.text(text)

    def excluded(self, image_id: str) -> None:
        """No token is excluded from the probes (see LayerView)."""
        return None


class LayerView:
    """One layer of a FeatureView, as a probe's FeatureSource, optionally with some token positions
    of a fixed layout excluded from the probe (SPEC E4.3: masking input-agnostic tokens)."""

    def __init__(self, view: FeatureView, index: int, excluded: np.ndarray | None = None):
        """`index` into view.layers; `excluded`: bool [positions] over the raster grid every image
        must then have, or None."""
        self.view, self.index = view, index
        self.layers = (view.layers[index],)
        self._excluded = None if excluded is None else np.asarray(excluded, dtype=bool)

    def grid(self, image_id: str) -> TokenGrid:
        return self.view.grid(image_id)

    def features(self, image_id: str) -> torch.Tensor:
        return self.view.features(image_id)[self.index : self.index + 1]

    def text(self, text: str) -> torch.Tensor:
        return self.view.text(text)[self.index : self.index + 1]

    def excluded(self, image_id: str) -> np.ndarray | None:
        """bool [rows*cols]: the image's tokens the probe must ignore, or None."""
        if self._excluded is None:
            return None
        grid = self.grid(image_id)
        if grid.num_tokens != len(self._excluded):
            raise ValueError(
                f"{self.view.store.manifest_path}: image {image_id!r} has a {grid.rows}x{grid.cols} grid, but the "
                f"excluded positions refer to a layout of {len(self._excluded)}; extract in the fixed layout"
            )
        return self._excluded
