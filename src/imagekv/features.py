"""Read a feature store written by `imagekv.extract`: per-image dense features, per-text values.

Shards are opened lazily and memory-mapped; only the token rows of the image or text asked for are
read, and at most `open_shards` shards stay open, so memory stays flat however many images a probe
walks through.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from imagekv.grid import TokenGrid
from imagekv.io import read_json
# Format 3: one [layers, tokens, C] tensor per representation and shard; an image's grid is
# [rows, cols, height, width], then its footprint if it does not tile the whole image (TokenGrid.to_json).
from imagekv.plan import STORE_FORMAT

SHARD_DIR = "shards"  # beside the manifest
MANIFEST = "manifest.json"
PROJECTION_LAYER = -1  # layer label of the projector output: the LM's input, before layer 0


class FeatureStore:
    def __init__(self, path: str | Path, open_shards: int = 4):
        """`path`: a store's folder (as the extraction rule outputs it) or its manifest."""
        path = Path(path)
        self.manifest_path = path / MANIFEST if path.is_dir() else path
        self.meta: dict = read_json(self.manifest_path)
        if self.meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.manifest_path} is a feature store of format {self.meta.get('format', 1)}; this "
                             f"code reads format {STORE_FORMAT}: delete the store and extract it again")
        self.layers: tuple[int, ...] = tuple(self.meta["layers"])
        self.image_ids: tuple[str, ...] = tuple(sorted(self.meta["images"]))
        self._shard_dir = self.manifest_path.parent / SHARD_DIR
        self._open_shards = open_shards
        self._handles: OrderedDict[str, object] = OrderedDict()

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
        """Token rows start:stop of a shard's [layers, tokens, C] tensor; only those bytes are read."""
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            self._handles[shard] = safe_open(str(self._shard_dir / shard), framework="pt")
            if len(self._handles) > self._open_shards:
                self._handles.popitem(last=False)
        return self._handles[shard].get_slice(tensor)[:, start:stop]


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
