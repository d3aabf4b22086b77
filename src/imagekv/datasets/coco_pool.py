"""A pool of COCO val2017 images for the cross-image key-variance analysis (E4).

Layout under `root`: `val2017/<id>.jpg` and, optionally, `annotations/instances_val2017.json`
(then the oracle sees category maps). A seeded fixed subset of `num_images`; no task samples beyond
the list of image ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, image_size, read_json, seeded_subset
from imagekv.datasets.refcoco import coco_mask
from imagekv.datasets.schema import ImageRef, OracleTruth

COCO_CATEGORY_IDS = 91  # COCO category ids run 1..90


class CocoPool:
    name = "coco_pool"
    task = "key_variance"

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        found = sorted(p.stem for p in (self.root / "val2017").glob("*.jpg"))
        if not found:
            raise DatasetFileError(f"no images in {self.root / 'val2017'}")
        self.image_ids = seeded_subset(found, cfg.get("num_images", 500), int(cfg.get("seed", 0)))

    def images(self) -> list[ImageRef]:
        return [ImageRef(i, self.root / "val2017" / f"{i}.jpg") for i in self.image_ids]

    def texts(self) -> list[str]:
        return []

    def samples(self) -> Iterator[str]:
        """The pool's image ids: the variance analysis needs nothing else."""
        yield from self.image_ids

    @cached_property
    def _annotations(self) -> dict[str, list[dict]]:
        path = self.root / "annotations" / "instances_val2017.json"
        if not path.exists():
            return {}
        data = read_json(path)
        try:
            stems = {image["id"]: Path(image["file_name"]).stem for image in data["images"]}
            by_image: dict[str, list[dict]] = {}
            for annotation in data["annotations"]:
                if annotation["image_id"] not in stems:
                    raise DatasetFileError(f"{path}: annotation {annotation.get('id')} is of image "
                                           f"{annotation['image_id']}, which `images` does not list")
                by_image.setdefault(stems[annotation["image_id"]], []).append(annotation)
        except (KeyError, TypeError) as error:
            raise DatasetFileError(f"{path} is not a COCO instances file: missing or bad {error!r}") from error
        return by_image

    def oracle_truth(self, image_id: str) -> OracleTruth:
        """COCO category map when the annotations are present, else one label everywhere."""
        height, width = image_size(self.root / "val2017" / f"{image_id}.jpg")
        labels = np.zeros((height, width), dtype=np.int64)
        for annotation in sorted(self._annotations.get(image_id, []), key=lambda a: a["id"]):
            try:
                labels[coco_mask(annotation["segmentation"], height, width) > 0] = annotation["category_id"]
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise DatasetFileError(
                    f"{self.root / 'annotations' / 'instances_val2017.json'}: annotation {annotation.get('id')} of "
                    f"image {image_id} has no readable segmentation and category_id: {error!r}"
                ) from error
        return OracleTruth(labels=labels, num_ids=COCO_CATEGORY_IDS)
