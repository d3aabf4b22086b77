"""BLINK multiple-choice questions (E4, E6), read from the Hugging Face dataset folder as published.

Layout under `root`, the snapshot of `BLINK-Benchmark/BLINK` (hub file list, read): one folder per
subtask, `<Subtask>/<split>-*.parquet`. Columns (the dataset card's features, read; their Arrow
types as `datasets` writes them, inferred): idx (str, e.g. "val_Art_Style_1"), question, sub_task
(the folder's name), image_1 .. image_4 (the `Image` feature: a struct {bytes, path}, null when the
question has fewer images), choices (list of str), answer ("(A)"), prompt and explanation. `prompt`
is the question, "Select from the following choices." and the lettered choices, with no answer
instruction (inferred: prompts quoted by public BLINK users, e.g. VisualSketchpad's BLINK tasks; the
lmms-eval task prepends its note to `prompt` and appends nothing).

Subtasks: the config's `subtasks`, else all 14 of the published benchmark; every one must be
present. The names are the hub's folder names (read: zeyofu/BLINK_Benchmark eval/saved_outputs/*/,
one file per subtask; lmms-eval's tasks/blink/blink_<subtask>.yaml list the same 14).

The embedded images are written once per subtask, under the run's results (`derived_dir`, never the
dataset folder): `<derived_dir>/images/<split>/<Subtask>-<content digest>/<idx>_<column>.<ext>`.
They are staged in `<that folder>.partial` under a lock; a rerun finds a staging folder only if an
earlier run crashed, and clears it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from imagekv.datasets.files import DatasetFileError, image_size, seeded_subset
from imagekv.datasets.schema import BlinkItem, ImageRef, OracleTruth

PUBLISHED_SUBTASKS = (
    "Art_Style",
    "Counting",
    "Forensic_Detection",
    "Functional_Correspondence",
    "IQ_Test",
    "Jigsaw",
    "Multi-view_Reasoning",
    "Object_Localization",
    "Relative_Depth",
    "Relative_Reflectance",
    "Semantic_Correspondence",
    "Spatial_Relation",
    "Visual_Correspondence",
    "Visual_Similarity",
)
IMAGE_COLUMNS = ("image_1", "image_2", "image_3", "image_4")
TEXT_COLUMNS = ("idx", "question", "sub_task", "choices", "answer", "prompt")
ANSWER = re.compile(r"^\(([A-Z])\)$")
# An idx becomes part of a file name: letters, digits, '_', '-' and '.', not starting with '.'.
SAFE_IDX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_CHOICES = 2


def answer_letter(row: dict, source: Path) -> str:
    """The answer's option letter, which must name one of the row's choices."""
    match = ANSWER.match(str(row["answer"]).strip())
    if not match:
        raise DatasetFileError(
            f"{source}: item {row['idx']!r}: answer {row['answer']!r} is not an option letter like '(A)'"
        )
    letter = match.group(1)
    if ord(letter) - ord("A") >= len(row["choices"]):
        raise DatasetFileError(
            f"{source}: item {row['idx']!r}: answer {row['answer']!r} names no option; "
            f"the item has {len(row['choices'])} choices"
        )
    return letter


def image_suffix(data: bytes, source: Path, idx: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return ".jpg" if image.format == "JPEG" else f".{image.format.lower()}"
    except OSError as error:
        raise DatasetFileError(f"{source}: item {idx!r}: an embedded image cannot be decoded: {error}") from error


def content_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


PUBLISHED_ROOT = "a snapshot of the hub dataset BLINK-Benchmark/BLINK (<Subtask>/<split>-*.parquet)"


class Blink:
    name = "blink"
    task = "blink"
    PUBLISHED_ROOT = PUBLISHED_ROOT

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.split = cfg.get("split", "val")
        if not cfg.get("derived_dir"):
            raise ValueError("blink: the loader needs `derived_dir`, the run's folder for the extracted images")
        self.cache_root = Path(cfg["derived_dir"]) / "images" / self.split
        self.subtasks = list(cfg.get("subtasks") or PUBLISHED_SUBTASKS)
        unknown = sorted(set(self.subtasks) - set(PUBLISHED_SUBTASKS))
        if unknown:
            raise ValueError(f"blink: unknown subtasks {unknown}; BLINK has {', '.join(PUBLISHED_SUBTASKS)}")
        limit, seed = cfg.get("items_per_subtask"), int(cfg.get("seed", 0))
        self.items = [item for s in self.subtasks for item in seeded_subset(self._read_items(s), limit, seed)]

    def _files(self, subtask: str) -> list[Path]:
        files = sorted((self.root / subtask).glob(f"{self.split}-*.parquet"))
        if not files:
            raise DatasetFileError(
                f"missing BLINK file: {self.root / subtask / f'{self.split}-*.parquet'} (subtask {subtask} is expected)"
            )
        return files

    def _rows(self, path: Path, columns: tuple[str, ...]) -> list[dict]:
        try:
            present = set(pq.read_schema(path).names)
            missing = [c for c in columns if c not in present]
            if missing:
                raise DatasetFileError(f"{path} lacks the BLINK columns {missing}")
            return pq.read_table(path, columns=list(columns)).to_pylist()
        except DatasetFileError:
            raise
        except Exception as error:  # pyarrow raises several types for bad files
            raise DatasetFileError(f"unreadable BLINK parquet {path}: {error}") from error

    def _read_items(self, subtask: str) -> list[BlinkItem]:
        items, seen = [], set()
        for path in self._files(subtask):
            for row in self._rows(path, (*TEXT_COLUMNS, *IMAGE_COLUMNS)):
                idx = self._check_row(row, subtask, path, seen)
                present = [c for c in IMAGE_COLUMNS if row[c] is not None]
                items.append(
                    BlinkItem(
                        item_id=idx,
                        subtask=subtask,
                        question=row["question"],
                        choices=tuple(row["choices"]),
                        answer=answer_letter(row, path),
                        image_ids=tuple(f"{idx}/{c}" for c in present),
                        prompt=row["prompt"] or "",
                    )
                )
        return items

    @staticmethod
    def _check_row(row: dict, subtask: str, path: Path, seen: set[str]) -> str:
        idx = row["idx"]
        if not isinstance(idx, str) or not SAFE_IDX.match(idx):
            raise DatasetFileError(
                f"{path}: item idx {idx!r} is not a plain name (letters, digits, '_', '-', '.'); "
                "it would name files, so it is refused"
            )
        if idx in seen:
            raise DatasetFileError(f"{path}: item idx {idx!r} occurs twice in subtask {subtask}")
        seen.add(idx)
        if row["sub_task"] != subtask:
            raise DatasetFileError(f"{path}: item {idx!r} has sub_task {row['sub_task']!r}, expected {subtask!r}")
        if not isinstance(row["choices"], list) or len(row["choices"]) < MIN_CHOICES:
            raise DatasetFileError(f"{path}: item {idx!r} has choices {row['choices']!r}, expected at least two")
        images = [row[c] for c in IMAGE_COLUMNS if row[c] is not None]
        if not images or any(not image.get("bytes") for image in images):
            raise DatasetFileError(f"{path}: item {idx!r} has no image, or an image without its bytes")
        return idx

    def _cache(self, subtask: str) -> Path:
        """The extracted images of one subtask; the first process to need them writes them."""
        files = self._files(subtask)
        folder = self.cache_root / f"{subtask}-{content_digest(files)}"
        if folder.is_dir():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent jobs wait for one writer
            if folder.is_dir():
                return folder
            staging = folder.with_name(f"{folder.name}.partial")
            shutil.rmtree(staging, ignore_errors=True)  # only a crashed run leaves one behind
            staging.mkdir()
            for path in files:
                for row in self._rows(path, ("idx", *IMAGE_COLUMNS)):
                    for column in IMAGE_COLUMNS:
                        if row[column] is not None:
                            data = row[column]["bytes"]
                            name = f"{row['idx']}_{column}{image_suffix(data, path, row['idx'])}"
                            (staging / name).write_bytes(data)
            os.rename(staging, folder)
        return folder

    @cached_property
    def _extracted(self) -> dict[str, Path]:
        """image_id -> extracted file, for every item in use."""
        paths = {}
        for subtask in dict.fromkeys(item.subtask for item in self.items):
            folder = self._cache(subtask)
            by_stem = {p.stem: p for p in folder.iterdir()}
            for item in (i for i in self.items if i.subtask == subtask):
                for image_id in item.image_ids:
                    stem = image_id.replace("/", "_")
                    if stem not in by_stem:
                        raise DatasetFileError(f"extracted image {stem} missing in {folder}; delete it to redo it")
                    paths[image_id] = by_stem[stem]
        return paths

    def images(self) -> list[ImageRef]:
        return sorted((ImageRef(i, path) for i, path in self._extracted.items()), key=lambda ref: ref.image_id)

    def texts(self) -> list[str]:
        return []

    def samples(self) -> Iterator[BlinkItem]:
        yield from self.items

    def oracle_truth(self, image_id: str) -> OracleTruth:
        """BLINK has no dense annotation: one label everywhere, so oracle features carry nothing."""
        return OracleTruth(labels=np.zeros(image_size(self._extracted[image_id]), dtype=np.int64), num_ids=1)
