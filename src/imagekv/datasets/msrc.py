"""MSRC co-segmentation sets (T2) in the object-discovery layout of Rubinstein et al. (2013).

Layout under `root`: `<collection>/<class>/<name>.{jpg,bmp,png}` with the binary ground truth in
`<collection>/<class>/GroundTruth/<name>.png` (foreground white). Each class folder is one set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, read_index_png
from imagekv.datasets.schema import CosegSet, ImageRef, OracleTruth

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".png")


def foreground(grey: np.ndarray) -> np.ndarray:
    """Binary mask from a 0/255 (or 0/1) ground-truth PNG."""
    return (grey > (127 if grey.max() > 1 else 0)).astype(np.uint8)


class Msrc:
    name = "msrc"
    task = "coseg"

    def __init__(self, root: Path, cfg: dict):
        self.folder = Path(root) / cfg.get("collection", "MSRC")
        if not self.folder.is_dir():
            raise DatasetFileError(f"missing co-segmentation folder: {self.folder}")
        found = sorted(p.name for p in self.folder.iterdir() if p.is_dir())
        self.classes = list(cfg.get("classes") or found)
        self._images = {c: self._class_images(c) for c in self.classes}

    def _class_images(self, class_name: str) -> list[Path]:
        paths = sorted(p for p in (self.folder / class_name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DatasetFileError(f"no images in {self.folder / class_name}")
        return paths

    def _mask(self, image: Path) -> np.ndarray:
        return foreground(read_index_png(image.parent / "GroundTruth" / f"{image.stem}.png"))

    @staticmethod
    def _image_id(image: Path) -> str:
        return f"{image.parent.name}/{image.stem}"

    def images(self) -> list[ImageRef]:
        refs = [ImageRef(self._image_id(p), p) for paths in self._images.values() for p in paths]
        return sorted(refs, key=lambda ref: ref.image_id)

    def texts(self) -> list[str]:
        return []

    def samples(self) -> Iterator[CosegSet]:
        for class_name, paths in self._images.items():
            yield CosegSet(
                set_id=class_name,
                class_name=class_name,
                image_ids=tuple(self._image_id(p) for p in paths),
                masks=tuple(self._mask(p) for p in paths),
            )

    def oracle_truth(self, image_id: str) -> OracleTruth:
        class_name, stem = image_id.split("/", 1)
        image = next(p for p in self._images[class_name] if p.stem == stem)
        class_id = self.classes.index(class_name) + 1
        return OracleTruth(labels=self._mask(image).astype(np.int64) * class_id, num_ids=len(self.classes) + 1)
