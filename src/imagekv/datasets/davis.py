"""DAVIS-2017 semi-supervised video object segmentation clips (T6).

Layout under `root`: `JPEGImages/<resolution>/<sequence>/<frame>.jpg`,
`Annotations/<resolution>/<sequence>/<frame>.png` (palette PNG: 0 background, 1..K object ids,
255 void) and `ImageSets/<year>/<split>.txt` listing the sequences: the `DAVIS/` folder of
DAVIS-2017-trainval-480p.zip (read: the layout the davis2017-evaluation toolkit and public DAVIS
loaders document).
Each label map must have its frame's size; an error names the annotation file.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, image_size, read_index_png, read_lines, require
from imagekv.datasets.schema import VOID, ImageRef, OracleTruth, VideoClip


PUBLISHED_ROOT = "the DAVIS folder of DAVIS-2017-trainval-480p.zip (JPEGImages/, Annotations/, ImageSets/)"


class Davis:
    name = "davis"
    task = "temporal_corr"
    PUBLISHED_ROOT = PUBLISHED_ROOT

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.resolution = cfg.get("resolution", "480p")
        listed = read_lines(self.root / "ImageSets" / str(cfg.get("year", 2017)) / f"{cfg.get('split', 'val')}.txt")
        self.sequences = listed[:: int(cfg.get("sequence_stride", 1))][: cfg.get("max_sequences")]
        max_frames = cfg.get("max_frames")
        self.frames = {seq: self._frame_names(seq)[:max_frames] for seq in self.sequences}

    def _frame_names(self, sequence: str) -> list[str]:
        folder = self.root / "JPEGImages" / self.resolution / sequence
        names = sorted(p.stem for p in folder.glob("*.jpg"))
        if not names:
            raise DatasetFileError(f"no frames in {folder}")
        return names

    def _labels(self, frame_id: str) -> np.ndarray:
        """The frame's label map, which must have the frame's size."""
        path = self.root / "Annotations" / self.resolution / f"{frame_id}.png"
        labels = read_index_png(path)
        frame = self.root / "JPEGImages" / self.resolution / f"{frame_id}.jpg"
        if labels.shape != image_size(frame):
            raise DatasetFileError(
                f"{path} is {labels.shape[1]}x{labels.shape[0]}, but its frame {frame} is "
                f"{image_size(frame)[1]}x{image_size(frame)[0]} (width x height)"
            )
        return labels

    def images(self) -> list[ImageRef]:
        ids = sorted(f"{seq}/{name}" for seq, names in self.frames.items() for name in names)
        return [ImageRef(i, require(self.root / "JPEGImages" / self.resolution / f"{i}.jpg")) for i in ids]

    def texts(self) -> list[str]:
        return []

    def samples(self) -> Iterator[VideoClip]:
        for seq, names in self.frames.items():
            frame_ids = tuple(f"{seq}/{name}" for name in names)
            yield VideoClip(clip_id=seq, frame_ids=frame_ids, label_maps=tuple(self._labels(f) for f in frame_ids))

    @cached_property
    def _num_ids(self) -> int:
        """1 + the largest object id of any annotated frame (ids are per sequence, so this bounds all)."""
        largest = 0
        for seq, names in self.frames.items():
            for name in names:
                labels = self._labels(f"{seq}/{name}")
                largest = max(largest, int(labels[labels != VOID].max(initial=0)))
        return largest + 1

    def oracle_truth(self, image_id: str) -> OracleTruth:
        labels = self._labels(image_id).astype(np.int64)
        return OracleTruth(labels=np.where(labels == VOID, 0, labels), num_ids=self._num_ids)
