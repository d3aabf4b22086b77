"""MSRC co-segmentation sets (T2), read from the `Data/` folder of Rubinstein et al.'s (2013)
Object Discovery archive (ObjectDiscovery-data.zip, people.csail.mit.edu/mrub/ObjectDiscovery/).

Layout under the root, the archive's `Data/` folder:
- `<collection>/<class>/` (collection `MSRC` by default), one folder per class, each one set. Read:
  the release's evaluation code (`evaluateSegmentationMultiClass`) lists the class folders of
  `Data/MSRC` and reads each class's masks from `<class>/GroundTruth/`.
- `<class>/<name>.bmp`: the images, 24-bit BMP as MSRC ships them [I: MSRC's own format; the class
  folders' file names are not documented]. Other image files in the folder are not read.
- `<class>/GroundTruth/<name>.png` (else `.bmp`): the binary foreground mask. The release's
  `readMask` looks for `.png`, `.jpg`, then `.bmp` and takes every non-zero pixel as foreground;
  here a mask must be 0 (background) and 255 (foreground) once read as grey [I: binary masks stored
  0/255], and any other level is an error naming the file, not silently background. Lossy `.jpg`
  masks are not accepted.
Class folder names and the masks' file format are inferred from that code, not read from the archive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, check_same_size, read_grey
from imagekv.datasets.schema import CosegSet, ImageRef, OracleTruth

PUBLISHED_ROOT = "the Data/ folder of ObjectDiscovery-data.zip (holding MSRC/<class>/*.bmp and GroundTruth/)"
IMAGE_SUFFIX = ".bmp"
MASK_SUFFIXES = (".png", ".bmp")
FOREGROUND = 255


class Msrc:
    name = "msrc"
    task = "coseg"
    PUBLISHED_ROOT = PUBLISHED_ROOT

    def __init__(self, root: Path, cfg: dict):
        self.folder = Path(root) / cfg.get("collection", "MSRC")
        if not self.folder.is_dir():
            raise DatasetFileError(f"missing co-segmentation folder: {self.folder}")
        found = sorted(p.name for p in self.folder.iterdir() if p.is_dir())
        self.classes = list(cfg.get("classes") or found)
        missing = [c for c in self.classes if c not in found]
        if missing:
            raise DatasetFileError(f"missing class folder(s) {missing} in {self.folder}")
        self._images = {c: self._class_images(c) for c in self.classes}

    def _class_images(self, class_name: str) -> list[Path]:
        paths = sorted(p for p in (self.folder / class_name).glob("*") if p.suffix.lower() == IMAGE_SUFFIX)
        if not paths:
            raise DatasetFileError(f"no {IMAGE_SUFFIX} images in {self.folder / class_name}")
        return paths

    def _mask(self, image: Path) -> np.ndarray:
        candidates = [image.parent / "GroundTruth" / f"{image.stem}{suffix}" for suffix in MASK_SUFFIXES]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise DatasetFileError(f"missing dataset file: {candidates[0]} (or .bmp), the mask of {image}")
        grey = read_grey(path)
        check_same_size(path, grey, image)
        unexpected = np.setdiff1d(np.unique(grey), [0, FOREGROUND])
        if unexpected.size:
            raise DatasetFileError(f"{path} holds grey levels {unexpected.tolist()[:5]}, expected only 0 and 255")
        return (grey == FOREGROUND).astype(np.uint8)

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
