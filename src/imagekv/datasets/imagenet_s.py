"""ImageNet-S50 semantic segmentation by class name (T3), on its validation images.

The root is the `ImageNetS50` folder as the ImageNet-S tools build it (LUSSeg/ImageNet-S, README
"Structure"). Read from it:
- `validation/<wnid>/<name>.JPEG`: the user's own ImageNet val images, which the repository's
  `datapreparation_val.py` copies there (read: that script).
- `validation-segmentation/<wnid>/<name>.png`: the annotations of the ImageNetS50 release zip. RGB
  PNGs, class id = R + G*256, 0 = other, 1000 = ignored (read: README "How to get the class id").
The repository's lists, committed under `published/imagenet_s/` (sources there), say what must be
present: `data/categories/ImageNetS_categories_im50.txt` (the 50 wnids; class id = 1 + index in
sorted order, README "How to match the class id") and `data/names/ImageNetS_im50_validation.txt`
(each validation image with its annotation). Query texts are the first name of each wnid in
ImageNet's `LOC_synset_mapping.txt` (`published/imagenet_s/synsets_im50.txt`), lower-cased [I].

`classes` (default all 50 wnids) restricts the run to some classes: their listed images are read and
only their pixels are queried (other classes count as other); `max_images` takes a seeded subset.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, check_same_size, read_lines, read_png_array, seeded_subset
from imagekv.datasets.schema import VOID, ImageRef, OracleTruth, TextQuery

PUBLISHED_ROOT = "the ImageNetS50 folder (validation/<wnid>/*.JPEG from your ImageNet val, validation-segmentation/)"
IGNORE_ID = 1000
OTHER_ID = 0


def published_list(name: str) -> Path:
    return Path(str(resources.files("imagekv.datasets") / "published" / "imagenet_s" / name))


CATEGORIES = published_list("ImageNetS_categories_im50.txt")
VALIDATION = published_list("ImageNetS_im50_validation.txt")
SYNSETS = published_list("synsets_im50.txt")


def decode_class_ids(rgb: np.ndarray) -> np.ndarray:
    """ImageNet-S class ids of an RGB annotation: R + G*256."""
    return rgb[..., 0].astype(np.int64) + rgb[..., 1].astype(np.int64) * 256


def class_names(wnids: list[str]) -> list[str]:
    """The first ImageNet name of each wnid, lower-cased."""
    names = {}
    for line in read_lines(SYNSETS):
        wnid, _, synonyms = line.partition(" ")
        names[wnid] = synonyms.split(",")[0].strip().lower()
    return [names[w] for w in wnids]


def validation_entries() -> list[tuple[str, str]]:
    """(image, annotation) paths relative to `validation/` and `validation-segmentation/`."""
    entries = []
    for number, line in enumerate(read_lines(VALIDATION), start=1):
        parts = line.split()
        if len(parts) != 2:
            raise DatasetFileError(f"{VALIDATION} line {number}: expected '<wnid>/<image>.JPEG <wnid>/<image>.png'")
        entries.append((parts[0], parts[1]))
    return entries


class ImageNetS:
    name = "imagenet_s"
    task = "semantic_seg"
    PUBLISHED_ROOT = PUBLISHED_ROOT

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.wnids = sorted(read_lines(CATEGORIES))
        unknown = sorted(set(cfg.get("classes") or []) - set(self.wnids))
        if unknown:
            raise DatasetFileError(f"classes {unknown} are not ImageNet-S50 wnids ({CATEGORIES})")
        self.classes = sorted(cfg.get("classes") or self.wnids)
        self.names = class_names(self.wnids)
        self._ids = {self.wnids.index(w) + 1 for w in self.classes}
        listed = [entry for entry in validation_entries() if entry[0].split("/")[0] in self.classes]
        for image, annotation in listed:  # every listed image of the chosen classes, before any job starts
            for path in (self.root / "validation" / image, self.root / "validation-segmentation" / annotation):
                if not path.is_file():
                    raise DatasetFileError(f"missing dataset file: {path} (listed in {VALIDATION})")
        chosen = seeded_subset(sorted(listed), cfg.get("max_images"), int(cfg.get("seed", 0)))
        self._files = {image.removesuffix(".JPEG"): (image, annotation) for image, annotation in chosen}

    def _image(self, image_id: str) -> Path:
        return self.root / "validation" / self._files[image_id][0]

    def _class_ids(self, image_id: str) -> np.ndarray:
        path = self.root / "validation-segmentation" / self._files[image_id][1]
        rgb = read_png_array(path)
        if rgb.ndim != 3:
            raise DatasetFileError(f"{path} is not an RGB ImageNet-S annotation")
        check_same_size(path, rgb, self._image(image_id))
        ids = decode_class_ids(rgb)
        unknown = np.setdiff1d(np.unique(ids), [*range(len(self.wnids) + 1), IGNORE_ID])
        if unknown.size:
            raise DatasetFileError(
                f"{path} holds class ids {unknown.tolist()[:5]}, expected 0..{len(self.wnids)} or {IGNORE_ID}"
            )
        return np.where(np.isin(ids, [*self._ids, IGNORE_ID]), ids, OTHER_ID)

    def images(self) -> list[ImageRef]:
        return [ImageRef(i, self._image(i)) for i in self._files]

    def texts(self) -> list[str]:
        return [self.names[i - 1] for i in sorted(self._ids)]

    def samples(self) -> Iterator[TextQuery]:
        """One query per chosen class present in each image (multi-class images score each class)."""
        for image_id in self._files:
            ids = self._class_ids(image_id)
            for class_id in np.unique(ids).tolist():
                if class_id in (OTHER_ID, IGNORE_ID):
                    continue
                mask = np.where(ids == IGNORE_ID, VOID, ids == class_id).astype(np.uint8)
                yield TextQuery(
                    query_id=f"{image_id}#{class_id}",
                    image_id=image_id,
                    text=self.names[class_id - 1],
                    mask=mask,
                    category=self.wnids[class_id - 1],
                )

    def oracle_truth(self, image_id: str) -> OracleTruth:
        ids = self._class_ids(image_id)
        return OracleTruth(
            labels=np.where(ids == IGNORE_ID, OTHER_ID, ids),
            num_ids=len(self.wnids) + 1,
            text_ids={self.names[i - 1]: i for i in sorted(self._ids)},
        )
