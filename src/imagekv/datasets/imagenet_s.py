"""ImageNet-S semantic segmentation by class name (T3), ImageNet-S50 validation by default.

Layout under `root` (one ImageNetS50 folder): `validation/<wnid>/<name>.JPEG`,
`validation-segmentation/<wnid>/<name>.png` (one per image; RGB; class id = R + G*256, 0 = other, 1000 = ignore),
`ImageNetS_categories_im50.txt` (the wnids; class id = 1 + index in sorted order) and
`LOC_synset_mapping.txt` ("<wnid> name, synonym, ..."; the text is the first name, lower-case).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, read_lines, read_png_array, seeded_subset
from imagekv.datasets.schema import VOID, ImageRef, OracleTruth, TextQuery

IGNORE_ID = 1000
OTHER_ID = 0


def decode_class_ids(rgb: np.ndarray) -> np.ndarray:
    """ImageNet-S class ids of an RGB annotation: R + G*256."""
    return rgb[..., 0].astype(np.int64) + rgb[..., 1].astype(np.int64) * 256


def class_names(mapping_file: Path, wnids: list[str]) -> list[str]:
    names = {}
    for line in read_lines(mapping_file):
        wnid, _, synonyms = line.partition(" ")
        names[wnid] = synonyms.split(",")[0].strip().lower()
    missing = [w for w in wnids if w not in names]
    if missing:
        raise DatasetFileError(f"{mapping_file} names no class for {', '.join(missing[:5])}")
    return [names[w] for w in wnids]


class ImageNetS:
    name = "imagenet_s"
    task = "semantic_seg"

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.wnids = sorted(read_lines(self.root / cfg.get("categories_file", "ImageNetS_categories_im50.txt")))
        self.names = class_names(self.root / cfg.get("names_file", "LOC_synset_mapping.txt"), self.wnids)
        found = sorted(f"{p.parent.name}/{p.stem}" for p in (self.root / "validation").glob("*/*.JPEG"))
        if not found:
            raise DatasetFileError(f"no images in {self.root / 'validation'}")
        self.image_ids = seeded_subset(found, cfg.get("max_images"), int(cfg.get("seed", 0)))

    def _class_ids(self, image_id: str) -> np.ndarray:
        path = self.root / "validation-segmentation" / f"{image_id}.png"
        rgb = read_png_array(path)
        if rgb.ndim != 3:
            raise DatasetFileError(f"{path} is not an RGB ImageNet-S annotation")
        ids = decode_class_ids(rgb)
        unknown = np.setdiff1d(np.unique(ids), [*range(len(self.wnids) + 1), IGNORE_ID])
        if unknown.size:
            raise DatasetFileError(
                f"{path} holds class ids {unknown.tolist()[:5]} beyond the {len(self.wnids)} classes"
            )
        return ids

    def images(self) -> list[ImageRef]:
        return [ImageRef(i, self.root / "validation" / f"{i}.JPEG") for i in self.image_ids]

    def texts(self) -> list[str]:
        return list(self.names)

    def samples(self) -> Iterator[TextQuery]:
        """One query per class present in each image (multi-class images score each class)."""
        for image_id in self.image_ids:
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
            text_ids={name: index + 1 for index, name in enumerate(self.names)},
        )
