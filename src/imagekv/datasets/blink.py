"""BLINK multiple-choice questions (E4, E6) from the Hugging Face hub parquet files.

Layout under `root`: `<Subtask>/<split>-*.parquet` with columns idx, question, sub_task, image_1 ..
image_4 (struct of bytes and path, or null), choices, answer ("(A)") and prompt. The embedded
images are extracted once, per subtask and atomically, to `extracted/<split>/<Subtask>/`.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from imagekv.datasets.files import DatasetFileError, image_size, seeded_subset
from imagekv.datasets.schema import BlinkItem, ImageRef, OracleTruth

IMAGE_COLUMNS = ("image_1", "image_2", "image_3", "image_4")
TEXT_COLUMNS = ("idx", "question", "sub_task", "choices", "answer", "prompt")
ANSWER = re.compile(r"^\(([A-Z])\)$")


def answer_letter(answer: str, source: Path) -> str:
    match = ANSWER.match(answer.strip())
    if not match:
        raise DatasetFileError(f"{source}: answer {answer!r} is not an option letter like '(A)'")
    return match.group(1)


def image_suffix(data: bytes, source: Path) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return ".jpg" if image.format == "JPEG" else f".{image.format.lower()}"
    except OSError as error:
        raise DatasetFileError(f"{source}: an embedded image cannot be decoded: {error}") from error


class Blink:
    name = "blink"
    task = "blink"

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.split = cfg.get("split", "val")
        found = sorted(p.parent.name for p in self.root.glob(f"*/{self.split}-*.parquet"))
        self.subtasks = list(cfg.get("subtasks") or dict.fromkeys(found))
        limit, seed = cfg.get("items_per_subtask"), int(cfg.get("seed", 0))
        self.items = [item for s in self.subtasks for item in seeded_subset(self._read_items(s), limit, seed)]

    def _files(self, subtask: str) -> list[Path]:
        files = sorted((self.root / subtask).glob(f"{self.split}-*.parquet"))
        if not files:
            raise DatasetFileError(f"missing BLINK file: {self.root / subtask / f'{self.split}-*.parquet'}")
        return files

    def _read_items(self, subtask: str) -> list[BlinkItem]:
        items = []
        for path in self._files(subtask):
            try:
                table = pq.read_table(path, columns=[*TEXT_COLUMNS, *IMAGE_COLUMNS])
            except Exception as error:  # pyarrow raises several types for bad files
                raise DatasetFileError(f"unreadable BLINK parquet {path}: {error}") from error
            for row in table.to_pylist():
                present = [c for c in IMAGE_COLUMNS if row[c] is not None]
                items.append(
                    BlinkItem(
                        item_id=row["idx"],
                        subtask=subtask,
                        question=row["question"],
                        choices=tuple(row["choices"]),
                        answer=answer_letter(row["answer"], path),
                        image_ids=tuple(f"{row['idx']}/{c}" for c in present),
                        prompt=row["prompt"] or "",
                    )
                )
        return items

    def _cache(self, subtask: str) -> Path:
        """The extracted images of one subtask, written to a staging folder then renamed in place."""
        folder = self.root / "extracted" / self.split / subtask
        if folder.is_dir():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{subtask}.", suffix=".partial", dir=folder.parent))
        try:
            for path in self._files(subtask):
                table = pq.read_table(path, columns=["idx", *IMAGE_COLUMNS])
                for row in table.to_pylist():
                    for column in IMAGE_COLUMNS:
                        if row[column] is not None:
                            data = row[column]["bytes"]
                            (staging / f"{row['idx']}_{column}{image_suffix(data, path)}").write_bytes(data)
            try:
                os.rename(staging, folder)
            except OSError:  # another process finished the same extraction first
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def _path(self, item: BlinkItem, image_id: str) -> Path:
        stem = image_id.replace("/", "_")
        matches = list(self._cache(item.subtask).glob(f"{stem}.*"))
        if len(matches) != 1:
            raise DatasetFileError(f"extracted image {stem} missing in {self._cache(item.subtask)}")
        return matches[0]

    def images(self) -> list[ImageRef]:
        refs = [ImageRef(i, self._path(item, i)) for item in self.items for i in item.image_ids]
        return sorted(refs, key=lambda ref: ref.image_id)

    def texts(self) -> list[str]:
        return []

    def samples(self) -> Iterator[BlinkItem]:
        yield from self.items

    def oracle_truth(self, image_id: str) -> OracleTruth:
        """BLINK has no dense annotation: one label everywhere, so oracle features carry nothing."""
        item = next(item for item in self.items if image_id in item.image_ids)
        return OracleTruth(labels=np.zeros(image_size(self._path(item, image_id)), dtype=np.int64), num_ids=1)
