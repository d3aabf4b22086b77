"""Read a feature store written by `imagekv.extract`: per-image dense features, per-text values.

Shards are opened lazily and memory-mapped; only the token rows of the image or text asked for are
read, and at most `open_shards` shards stay open, so memory stays flat however many images a probe
walks through.

A store verifies itself. The manifest records each shard's size, the sha256 of the whole file and
of its safetensors header, each tensor's dtype and shape, and the sha256 of each image's (or
text's) rows in each tensor. When a store first opens a shard it checks the size, the header and
every token range and text row the manifest gives against the keys and grids the shard itself
holds; every read hashes the rows it returns (once per rows and process), so verification costs
no extra disk reads. A mismatch raises StoreIntegrityError naming the shard.
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
# Format 4: one [layers, tokens, C] tensor per representation and shard; an image's grid is
# [rows, cols, height, width], then its footprint if it does not tile the whole image (TokenGrid.to_json);
# each shard's record (sizes, hashes, dtypes, shapes) in the manifest.
from imagekv.plan import STORE_FORMAT

SHARD_DIR = "shards"  # beside the manifest
MANIFEST = "manifest.json"
PROJECTION_LAYER = -1  # layer label of the projector output: the LM's input, before layer 0
TOWER_LAYER = -2  # layer label of the MLM's own vision tower output: the projector's input
SINGLE_LAYER_LABELS = {"projection": PROJECTION_LAYER, "tower": TOWER_LAYER}
METADATA_KEY = "imagekv"  # the shard's one metadata entry: safetensors writes several in random order
RECORD_SUFFIX = ".json"  # shards/NNNNN.safetensors.json: the shard's record, written just after it
SHARD_NAME = re.compile(r"\d{5}\.safetensors")
# safetensors' names of the stored dtypes (https://github.com/huggingface/safetensors, format spec)
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
CHUNK_BYTES = 1 << 22
# (path, inode, size, mtime, tensor, first row, sha256) of rows already hashed in this process
_VERIFIED_ROWS: set[tuple] = set()


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


def key_rows(metadata: dict) -> list[tuple[int, int]]:
    """Token rows start:stop of each key of a shard, in storage order: an image's grid, a text's one row."""
    rows, start = [], 0
    for key in metadata["keys"]:
        count = metadata["grids"][key][0] * metadata["grids"][key][1] if metadata["kind"] == "images" else 1
        rows.append((start, start + count))
        start += count
    return rows


def shard_record(path: Path) -> dict:
    """What the manifest records of a shard, from one sequential pass over its bytes: per tensor,
    the sha256 of each key's rows across all layers, in the order a [:, start:stop] slice holds them."""
    header, raw = read_header(path)
    rows = key_rows(header["__metadata__"])
    if not rows:
        raise StoreIntegrityError(f"{path}: its metadata lists no keys")
    tensors = sorted(((name, entry) for name, entry in header.items() if name != "__metadata__"),
                     key=lambda item: item[1]["data_offsets"])
    whole, record = hashlib.sha256(raw), {}
    with open(path, "rb") as handle:
        handle.seek(len(raw))
        position = 0
        for name, entry in tensors:
            start, stop = entry["data_offsets"]
            layers, tokens = (entry["shape"] + [0, 0])[:2]
            row_bytes = (stop - start) // max(layers * tokens, 1)
            if start != position or len(entry["shape"]) != 3 or tokens != rows[-1][1] or \
                    row_bytes * layers * tokens != stop - start:
                raise StoreIntegrityError(f"{path}: tensor {name!r} ({entry['shape']} at bytes {start}:{stop}) does "
                                          f"not hold the {rows[-1][1]} token rows of its keys, from byte {position}")
            digests = [hashlib.sha256() for _ in rows]
            for _ in range(layers):  # layer-major: each layer holds every key's rows in turn
                for digest, (first, last) in zip(digests, rows):
                    _hash_bytes(handle, (last - first) * row_bytes, path, digest, whole)
            record[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "rows": [d.hexdigest() for d in digests]}
            position = stop
        if handle.read(1):
            raise StoreIntegrityError(f"{path}: bytes after its last tensor")
    return {"size": len(raw) + position, "sha256": whole.hexdigest(),
            "header_sha256": hashlib.sha256(raw).hexdigest(), "tensors": record}


def _dtypes_and_shapes(tensors: dict) -> dict:
    return {name: {"dtype": entry["dtype"], "shape": entry["shape"]} for name, entry in tensors.items()}


def _hash_bytes(handle, count: int, path: Path, *digests) -> None:
    while count > 0:
        chunk = handle.read(min(count, CHUNK_BYTES))
        if not chunk:
            raise StoreIntegrityError(f"{path}: truncated (the file ends {count} bytes early)")
        for digest in digests:
            digest.update(chunk)
        count -= len(chunk)


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
        self._rows: dict[str, dict[int, tuple[int, str]]] = {}  # per checked shard: first row -> (key index, key)

    def grid(self, image_id: str) -> TokenGrid:
        return TokenGrid(*self._image_entry(image_id)["grid"])

    def features(self, image_id: str, representation: str) -> torch.Tensor:
        """float32 [L, rows, cols, C]; L = len(layers) for values/keys, 1 for projection and tower."""
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
            if shard not in self._rows:
                self._rows[shard] = self._check_shard(shard)
            self._handles[shard] = safe_open(str(self._shard_dir / shard), framework="pt")
            if len(self._handles) > self._open_shards:
                self._handles.popitem(last=False)
        rows = self._handles[shard].get_slice(tensor)[:, start:stop]
        self._check_rows(shard, tensor, start, rows)
        return rows

    def _check_shard(self, shard: str) -> dict[int, tuple[int, str]]:
        """Size, header, dtypes, shapes, token ranges and text rows of `shard` against the manifest;
        returns the first row of each key -> the key's index and name."""
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
        spans = zip(metadata["keys"], key_rows(metadata))
        return {first: (index, key) for index, (key, (first, _)) in enumerate(spans)}

    def _check_index(self, shard: str, path: Path, metadata: dict, token_counts: set[int]) -> None:
        """The manifest's entries of `shard` must be exactly those its keys and grids give."""
        rows = key_rows(metadata)
        if metadata["kind"] == "images":
            expected = {key: {"grid": metadata["grids"][key], "tokens": list(span)}
                        for key, span in zip(metadata["keys"], rows)}
        else:
            expected = {key: {"row": row} for row, key in enumerate(metadata["keys"])}
        start = rows[-1][1] if rows else 0
        entries = self.meta["images" if metadata["kind"] == "images" else "texts"]
        claimed = {key: {k: v for k, v in entry.items() if k != "shard"}
                   for key, entry in entries.items() if entry["shard"] == shard}
        wrong = sorted(key for key in expected.keys() | claimed.keys() if expected.get(key) != claimed.get(key))
        if wrong or token_counts != {start}:
            raise StoreIntegrityError(
                f"{self.manifest_path}: the entries of {metadata['kind']} {wrong[:5]} disagree with shard {path}, "
                f"which holds {len(expected)} {metadata['kind']} in {sorted(token_counts)} rows"
            )
        items = self.meta.get("items", {})
        if metadata["kind"] == "images" and metadata.get("items", {}) != {k: items[k] for k in expected if k in items}:
            raise StoreIntegrityError(f"{self.manifest_path}: the per-item prefixes of shard {path} differ from "
                                      "its manifest's items")

    def _check_rows(self, shard: str, tensor: str, start: int, rows: torch.Tensor) -> None:
        """Hash the rows a read returns against the manifest, once per file version and process."""
        path = self._shard_dir / shard
        index, name = self._rows[shard][start]  # start: a checked token range or text row of this shard
        expected = self._records[shard]["tensors"][tensor]["rows"][index]
        status = path.stat()
        seen = (str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns, tensor, start, expected)
        if seen in _VERIFIED_ROWS:
            return
        if hashlib.sha256(rows.contiguous().view(torch.uint8).numpy()).hexdigest() != expected:
            raise StoreIntegrityError(f"{path}: the bytes of tensor {tensor!r} rows of {name!r} do not match the "
                                      f"sha256 {self.manifest_path} records; the shard is damaged: extract it again")
        _VERIFIED_ROWS.add(seen)


class FeatureView:
    """One representation of a store, what a probe reads; `layers` labels the leading feature axis."""

    def __init__(self, store: FeatureStore, representation: str):
        self.store = store
        self.representation = representation
        label = SINGLE_LAYER_LABELS.get(representation)
        self.layers = store.layers if label is None else (label,)
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


class FixedQueries:
    """A value view whose text queries come from another store: E5 holds the query vectors fixed
    (the no-prefix store's) while the image values change with the prefix."""

    def __init__(self, view: FeatureView, queries: FeatureView):
        if view.layers != queries.layers:
            raise ValueError(f"{view.store.manifest_path} holds layers {list(view.layers)}, but the text queries' "
                             f"store {queries.store.manifest_path} holds {list(queries.layers)}")
        self.view, self.queries = view, queries
        self.layers, self.image_ids = view.layers, view.image_ids

    def features(self, image_id: str) -> torch.Tensor:
        return self.view.features(image_id)

    def grid(self, image_id: str) -> TokenGrid:
        return self.view.grid(image_id)

    def text(self, text: str) -> torch.Tensor:
        return self.queries.text(text)

    def excluded(self, image_id: str) -> None:
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
