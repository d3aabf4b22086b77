"""Feature extraction: every image of a dataset through one backbone, into fp16 safetensors shards.

Layout beside the manifest:
    shards/spec.json            hash of the spec (store format included) and of the inputs
    shards/NNNNN.safetensors    a run of images (sorted by id): one tensor per representation,
                                [layers, tokens, C], the images' grid tokens one image after another
                                (raster order within each); then the dataset's query texts: one
                                `values` tensor [layers, texts, C]. Its metadata lists its keys
    (A store with a per-item prefix template, `per_item`, E5: one extraction per text query, keyed
    by imagekv.prefixes.item_key, each image after its own filled prefix and followed by its query
    in the same sequence; its text rows are those in-context query values, keyed likewise, and the
    manifest's `items` give each key's image, prefix and query.)
    shards/NNNNN.safetensors.json  the shard's record: size, sha256 of the file, of its header and
                                of each tensor, dtypes and shapes (see imagekv.features.shard_record)
    manifest.json               the index, written last: its presence means the store is complete.
                                Per image its shard, grid and token range; per text its shard and
                                row; per shard its record

One tensor per representation and shard, rather than one per image, keeps the safetensors header
(one JSON entry per tensor) out of the stored bytes: they stay at the fp16 minimum however small the
grid.

Each shard is written atomically, then its record, so after a crash a rerun keeps every shard that
still matches its record and extracts the missing or damaged ones. A changed spec or changed input
files clear the shards.
Shards and manifest are deterministic (sorted order, no timestamps): two runs give identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import safetensors
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from imagekv.config import canonical_json, spec_hash
from imagekv.datasets import load_dataset
from imagekv.datasets.schema import Dataset
from imagekv.features import (
    MANIFEST,
    METADATA_KEY,
    RECORD_SUFFIX,
    SHARD_DIR,
    STORE_FORMAT,
    read_shard_metadata,
    record_path,
    shard_record,
)
from imagekv.images import load_rgb
from imagekv.io import atomic_path, read_json, write_json
from imagekv.models.base import Backbone
from imagekv.models.registry import build_backbone
from imagekv.prefixes import PrefixItem, prefix_items

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
TEXTS_PER_SHARD = 1024
REPRESENTATIONS = ("values", "keys", "projection", "tower")
# Appends one batch's token rows, [layers, tokens, C], to a shard's list per stored tensor, and the
# batch's facts to the shard's metadata.
EncodeBatch = Callable[[list[str], dict[str, list[torch.Tensor]], dict], None]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Shard:
    name: str  # file name inside shards/
    kind: str  # "images" | "texts"
    keys: tuple[str, ...]  # image ids or texts, in storage order


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"spec key 'device' must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("spec key 'device' is cuda but no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return _dtype(dtype, "dtype")


def extract_store(spec: dict, store_dir: Path) -> None:
    """Extract into a staging folder beside `store_dir`, then rename it onto `store_dir`.

    Snakemake deletes an unfinished job's output folder before rerunning it; the staging folder
    survives, so a rerun after a crash keeps the finished shards and resumes.
    """
    store_dir = Path(store_dir)
    staging = store_dir.with_name(f".{store_dir.name}.partial")
    extract(spec, staging / MANIFEST)
    if store_dir.exists():
        shutil.rmtree(store_dir)
    os.replace(staging, store_dir)


def extract(spec: dict, manifest_path: Path) -> None:
    """Extract the features `spec` describes and write the store whose index is `manifest_path`."""
    manifest_path = Path(manifest_path)
    manifest_path.unlink(missing_ok=True)  # a store without its manifest reads as incomplete
    dataset = load_dataset(spec["dataset"], Path(spec["dataset_root"]), spec["dataset_cfg"])
    Extraction(spec, dataset, manifest_path).run()


class Extraction:
    """One extraction job; the backbone is only built if some shard is missing."""

    def __init__(self, spec: dict, dataset: Dataset, manifest_path: Path):
        self.spec = spec
        self.dataset = dataset
        self.manifest_path = manifest_path
        self.shard_dir = manifest_path.parent / SHARD_DIR
        self.refs = {ref.image_id: ref for ref in dataset.images()}
        if not self.refs:
            raise ValueError(f"dataset {spec['dataset']!r} at {spec['dataset_root']} lists no images")
        self.items: dict[str, PrefixItem] = (
            prefix_items(dataset.samples(), spec["prefix"], spec["dataset"]) if spec.get("per_item") else {}
        )
        self.keys = sorted(self.items or self.refs)  # what each image shard holds, in storage order
        self.texts = self._text_keys()
        self.in_context: dict[str, torch.Tensor] = {}  # item key -> its query's values, until stored
        self.store = _store_representations(spec["store"])
        if spec.get("store_format") != STORE_FORMAT:  # in the spec hash: another format clears the shards
            raise ValueError(f"spec key 'store_format' is {spec.get('store_format')!r}; this code writes {STORE_FORMAT}")
        self.store_dtype = _dtype(spec["store_dtype"], "store_dtype")
        self.batch_size = _positive(spec, "batch_size")
        self.images_per_shard = _positive(spec, "images_per_shard")
        self.max_image_pixels = _positive(spec, "max_image_pixels")
        self.device = resolve_device(spec["device"])
        self.dtype = resolve_dtype(spec["dtype"], self.device)
        self.warmed_up = False

    def _text_keys(self) -> list[str]:
        """The store's text rows: per item its in-context query value; else the dataset's query texts,
        text-only, in a no-prefix store only (E5 holds the queries fixed: they are read with no prefix)."""
        if self.items:
            return sorted(self.items)
        return [] if self.spec["prefix"] else sorted(set(self.dataset.texts()))

    @cached_property
    def backbone(self) -> Backbone:
        log.info("building backbone %s on %s (%s)", self.spec["model"], self.device, self.dtype)
        return build_backbone(
            self.spec["model"], self.spec["model_cfg"], device=self.device, dtype=self.dtype, dataset=self.dataset
        )

    @cached_property
    def layers(self) -> list[int] | None:
        """The LM layers to store; None = all. Single-layer backbones (SigLIP, calibration) ignore it."""
        requested = self.spec["layers"]
        if requested == "all" or self.backbone.num_layers == 1:
            return None
        bad = [layer for layer in requested if not 0 <= layer < self.backbone.num_layers]
        if bad:
            raise ValueError(f"spec key 'layers' holds {bad}, outside 0..{self.backbone.num_layers - 1}")
        return sorted(set(requested))

    def plan(self) -> list[Shard]:
        ids, per_shard = self.keys, self.images_per_shard
        runs = [("images", tuple(ids[i : i + per_shard])) for i in range(0, len(ids), per_shard)]
        texts, per_text_shard = self.texts, TEXTS_PER_SHARD
        runs += [("texts", tuple(texts[i : i + per_text_shard])) for i in range(0, len(texts), per_text_shard)]
        return [Shard(f"{index:05d}.safetensors", kind, keys) for index, (kind, keys) in enumerate(runs)]

    def run(self) -> None:
        shards = self.plan()
        self._prepare_shard_dir({name for shard in shards for name in (shard.name, shard.name + RECORD_SUFFIX)})
        done = {shard.name for shard in shards if self._intact(shard)}
        if done:
            log.info("resuming: %d of %d shards already complete", len(done), len(shards))
        image_shards = [s for s in shards if s.kind == "images"]
        text_shards = [s for s in shards if s.kind == "texts"]
        self._write_missing(image_shards, done, self._encode_items if self.items else self._encode_images)
        try:
            self._write_missing(text_shards, done, self._encode_item_queries if self.items else self._encode_texts)
        except NotImplementedError:
            log.info("backbone %s has no text tokens: no text features stored", self.spec["model"])
            text_shards = []
        write_json(self.manifest_path, self.manifest(image_shards, text_shards))

    def _write_missing(self, shards: list[Shard], done: set[str], encode: EncodeBatch) -> None:
        """Encode and write every shard not yet on disk, batch by batch, with a progress bar."""
        if not shards:
            return
        with _progress(sum(len(s.keys) for s in shards), shards[0].kind) as bar:
            bar.update(sum(len(s.keys) for s in shards if s.name in done))
            for shard in shards:
                if shard.name in done:
                    continue
                parts, meta = {}, {"kind": shard.kind, "keys": list(shard.keys)}
                for start in range(0, len(shard.keys), self.batch_size):
                    batch = list(shard.keys[start : start + self.batch_size])
                    encode(batch, parts, meta)
                    bar.update(len(batch))
                _save_shard(self.shard_dir / shard.name, parts, meta)

    def _prepare_shard_dir(self, planned: set[str]) -> None:
        """Clear shards made for another spec or other inputs, and files no shard of the plan owns."""
        stamp = {"spec_hash": spec_hash(self.spec), "inputs_sha1": self._inputs_fingerprint()}
        spec_file = self.shard_dir / SPEC_FILE
        stale = not spec_file.exists() or json.loads(spec_file.read_text(encoding="utf-8")) != stamp
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        for path in self.shard_dir.iterdir():
            if path.name != SPEC_FILE and (stale or path.name not in planned):
                path.unlink()
        if stale:
            write_json(spec_file, stamp)

    def _intact(self, shard: Shard) -> bool:
        """Whether a staged shard is complete and undamaged; a damaged one is removed, to be redone."""
        path = self.shard_dir / shard.name
        if not path.exists():
            return False
        try:
            same_keys = read_shard_metadata(path)["keys"] == list(shard.keys)
            if same_keys and shard_record(path) == read_json(record_path(path)):
                return True
            problem = "it differs from its record"
        except (OSError, ValueError, KeyError) as error:
            problem = str(error)
        log.warning("staged shard %s is damaged (%s): extracting it again", path, problem)
        path.unlink()
        record_path(path).unlink(missing_ok=True)
        return False

    def _inputs_fingerprint(self) -> str:
        """SHA-1 over every image file's bytes and every text: rewritten inputs invalidate shards."""
        digest = hashlib.sha1()
        for image_id in sorted(self.refs):
            digest.update(canonical_json([image_id, _file_sha1(self.refs[image_id].path)]).encode("utf-8"))
        digest.update(canonical_json(self.texts).encode("utf-8"))
        digest.update(canonical_json({key: item.to_json() for key, item in self.items.items()}).encode("utf-8"))
        return digest.hexdigest()

    def _encode_images(self, image_ids: list[str], parts: dict, meta: dict) -> None:
        """Append the grid tokens of `image_ids` to `parts`, one list per representation; their grids
        and layers go to `meta`."""
        images = [load_rgb(self.refs[image_id].path, max_pixels=self.max_image_pixels) for image_id in image_ids]
        self._warm_up(images[0], image_ids[0])
        outputs = self.backbone.encode_with_ids(images, image_ids, self.spec["prefix"], self.layers)
        meta["prompt"] = self.backbone.prompt_text(self.spec["prefix"])
        for image_id, output in zip(image_ids, outputs, strict=True):
            self._add_output(image_id, output, parts, meta)

    def _encode_items(self, keys: list[str], parts: dict, meta: dict) -> None:
        """Like _encode_images, per item: each image after its own prefix, its query after it (the
        query's values are kept for the text shards, which are written next)."""
        items = [self.items[key] for key in keys]
        images = [load_rgb(self.refs[item.image_id].path, max_pixels=self.max_image_pixels) for item in items]
        self._warm_up(images[0], items[0].image_id)
        outputs = self.backbone.encode_items(images, [i.prefix for i in items], [i.query for i in items], self.layers)
        meta["prompt"] = self.backbone.prompt_text(self.spec["prefix"])  # the template, before it is filled
        meta.setdefault("items", {}).update({key: item.to_json() for key, item in zip(keys, items)})
        for key, (output, query_values) in zip(keys, outputs, strict=True):
            self._add_output(key, output, parts, meta)
            self.in_context[key] = query_values

    def _add_output(self, key: str, output, parts: dict, meta: dict) -> None:
        meta["layers"] = list(_same_layers(meta.get("layers"), output.layers, key))
        grid = output.grid
        meta.setdefault("grids", {})[key] = grid.to_json()
        for representation in self.store:
            tensor = getattr(output, representation)
            if tensor is None:
                raise ValueError(f"backbone {self.spec['model']!r} gives no {representation!r} for image "
                                 f"{key!r}; remove it from spec key 'store'")
            rows = tensor.to(self.store_dtype).reshape(-1, grid.num_tokens, tensor.shape[-1])  # [L, tokens, C]
            parts.setdefault(representation, []).append(rows)

    def _warm_up(self, image: Image.Image, image_id: str) -> None:
        """Once per process, one forward whose features are dropped, so that no stored feature comes
        from a process's first forward, where libraries choose kernels and fill caches lazily (issue
        20: a store's first image once differed by one fp16 step). Costs one forward per job."""
        if not self.warmed_up:
            self.backbone.encode_with_ids([image], [image_id], self.spec["prefix"], self.layers)
            self.warmed_up = True

    def _encode_item_queries(self, keys: list[str], parts: dict, meta: dict) -> None:
        """The in-context query values of `keys`, kept from their image shards' forwards (after a
        resume, those of shards already on disk are computed again)."""
        missing = [key for key in keys if key not in self.in_context]
        if missing:
            self._encode_items(missing, {}, {})
        values = torch.stack([self.in_context.pop(key) for key in keys])  # [keys, L, C]
        parts.setdefault("values", []).append(values.to(self.store_dtype).transpose(0, 1))

    def _encode_texts(self, texts: list[str], parts: dict, meta: dict) -> None:
        values = self.backbone.encode_text(texts, self.spec["prefix"], self.layers)  # [texts, L, C]
        parts.setdefault("values", []).append(values.to(self.store_dtype).transpose(0, 1))

    def manifest(self, image_shards: list[Shard], text_shards: list[Shard]) -> dict:
        images, layers, prompt = {}, None, None
        for shard in image_shards:
            meta = read_shard_metadata(self.shard_dir / shard.name)
            prompt = meta["prompt"]
            layers = _same_layers(layers, meta["layers"], shard.name)
            start = 0
            for image_id in shard.keys:  # storage order
                grid = meta["grids"][image_id]
                stop = start + grid[0] * grid[1]
                images[image_id] = {"shard": shard.name, "grid": grid, "tokens": [start, stop]}
                start = stop
        texts = {text: {"shard": s.name, "row": row} for s in text_shards for row, text in enumerate(s.keys)}
        shards = {s.name: read_json(record_path(self.shard_dir / s.name)) for s in (*image_shards, *text_shards)}
        return {
            "format": STORE_FORMAT,
            "model": self.spec["model"],
            "model_cfg": self.spec["model_cfg"],
            "dataset": self.spec["dataset"],
            "prefix_name": self.spec["prefix_name"],
            "prefix": self.spec["prefix"],
            "prompt": prompt,  # the exact text before the image's tokens expand (None: no text)
            "items": {key: item.to_json() for key, item in self.items.items()},
            "layers": list(layers),
            "representations": list(self.store),
            "store_dtype": self.spec["store_dtype"],
            "device": self.device,
            "compute_dtype": str(self.dtype).removeprefix("torch."),
            "images": images,
            "texts": texts,
            "shards": shards,
            "spec": self.spec,
            "spec_hash": spec_hash(self.spec),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "safetensors": safetensors.__version__,
            },
        }


def _save_shard(path: Path, parts: dict[str, list[torch.Tensor]], meta: dict) -> None:
    """One tensor per entry of `parts`, its pieces joined along the token axis (each list is freed
    once joined, so a shard is held about twice, not three times, while written)."""
    tensors = {name: torch.cat(parts.pop(name), dim=1) for name in sorted(parts)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: canonical_json(meta)})
    write_json(record_path(path), shard_record(path))


def _store_representations(store: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(store) - set(REPRESENTATIONS))
    if unknown or not store:
        raise ValueError(f"spec key 'store' must list some of {list(REPRESENTATIONS)}, got {list(store)}")
    return tuple(r for r in REPRESENTATIONS if r in store)


def _dtype(name: str, key: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"spec key {key!r} must be one of {sorted(DTYPES)} (or auto for dtype), got {name!r}")
    return DTYPES[name]


def _same_layers(seen: Sequence[int] | None, layers: Sequence[int], where: str) -> tuple[int, ...]:
    """Every image of a store must hold the same layers."""
    layers = tuple(layers)
    if seen is not None and layers != tuple(seen):
        raise ValueError(f"{where} holds layers {list(layers)}, other images hold {list(seen)}")
    return layers


def _positive(spec: dict, key: str) -> int:
    value = spec[key]
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"spec key {key!r} must be a positive int, got {value!r}")
    return value


def _file_sha1(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()


def _progress(total: int, unit: str) -> tqdm:
    return tqdm(total=total, unit=unit.rstrip("s"), desc=f"extracting {unit}", file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
