"""RefCOCO (UNC splits) referring expressions (T4): the instance mask each sentence names.

Layout under `root`: `refcoco/refs(unc).p` (a pickle read only through the plain-data unpickler),
`refcoco/instances.json` (COCO format; masks as polygons or RLE) and the COCO images
`train2014/COCO_train2014_<id>.jpg`. A seeded fixed list of `num_expressions` sentences of `split`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from imagekv.datasets.files import DatasetFileError, read_json, require, seeded_subset
from imagekv.datasets.safe_pickle import load_plain_pickle
from imagekv.datasets.schema import ImageRef, OracleTruth, TextQuery


def coco_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):  # polygons: one RLE per polygon, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(np.uint8)


class RefCoco:
    name = "refcoco"
    task = "referring_seg"

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        folder = self.root / cfg.get("dataset", "refcoco")
        self.instances_file = folder / "instances.json"
        refs_file = folder / cfg.get("refs_file", "refs(unc).p")
        split = cfg.get("split", "val")
        refs = [r for r in load_plain_pickle(require(refs_file)) if r["split"] == split]
        sentences = [(ref, sentence) for ref in refs for sentence in ref["sentences"]]
        if not sentences:
            raise DatasetFileError(f"{refs_file} has no referring expressions in split {split!r}")
        self.sentences = seeded_subset(sentences, cfg.get("num_expressions", 1000), int(cfg.get("seed", 0)))
        self.refs_by_image: dict[int, list[dict]] = {}
        for ref in refs:
            self.refs_by_image.setdefault(ref["image_id"], []).append(ref)

    @cached_property
    def _coco(self) -> tuple[dict[int, dict], dict[int, list[dict]], dict[int, str]]:
        """Images by id, their annotations (sorted by id) and category names, for the images in use."""
        data = read_json(self.instances_file)
        wanted = {ref["image_id"] for ref, _ in self.sentences}
        images = {image["id"]: image for image in data["images"] if image["id"] in wanted}
        annotations: dict[int, list[dict]] = {image_id: [] for image_id in images}
        for annotation in data["annotations"]:
            if annotation["image_id"] in annotations:
                annotations[annotation["image_id"]].append(annotation)
        for listed in annotations.values():
            listed.sort(key=lambda a: a["id"])
        missing = wanted - images.keys()
        if missing:
            raise DatasetFileError(f"{self.instances_file} lacks images {sorted(missing)[:5]} named by the refs")
        return images, annotations, {c["id"]: c["name"] for c in data["categories"]}

    def _image_id(self, coco_id: int) -> str:
        return Path(self._coco[0][coco_id]["file_name"]).stem

    def _annotation(self, coco_id: int, ann_id: int) -> dict:
        for annotation in self._coco[1][coco_id]:
            if annotation["id"] == ann_id:
                return annotation
        raise DatasetFileError(f"{self.instances_file} lacks annotation {ann_id} of image {coco_id}")

    def _mask(self, coco_id: int, annotation: dict) -> np.ndarray:
        image = self._coco[0][coco_id]
        return coco_mask(annotation["segmentation"], image["height"], image["width"])

    def images(self) -> list[ImageRef]:
        coco_ids = {ref["image_id"] for ref, _ in self.sentences}
        refs = [
            ImageRef(self._image_id(i), require(self.root / "train2014" / self._coco[0][i]["file_name"]))
            for i in coco_ids
        ]
        return sorted(refs, key=lambda ref: ref.image_id)

    def texts(self) -> list[str]:
        return list(dict.fromkeys(sentence["sent"] for _, sentence in self.sentences))

    def samples(self) -> Iterator[TextQuery]:
        for ref, sentence in self.sentences:
            coco_id = ref["image_id"]
            yield TextQuery(
                query_id=str(sentence["sent_id"]),
                image_id=self._image_id(coco_id),
                text=sentence["sent"],
                mask=self._mask(coco_id, self._annotation(coco_id, ref["ann_id"])),
                category=self._coco[2].get(ref["category_id"], ""),
            )

    @cached_property
    def _num_ids(self) -> int:
        return 1 + max(len(listed) for listed in self._coco[1].values())

    def oracle_truth(self, image_id: str) -> OracleTruth:
        """Instance ids local to the image (1 + rank by annotation id): a sentence such as "left man"
        names different instances in different images, so its id is only defined per image."""
        coco_id = next(i for i, image in self._coco[0].items() if Path(image["file_name"]).stem == image_id)
        annotations = self._coco[1][coco_id]
        labels = np.zeros((self._coco[0][coco_id]["height"], self._coco[0][coco_id]["width"]), dtype=np.int64)
        for rank, annotation in enumerate(annotations):
            labels[self._mask(coco_id, annotation) > 0] = rank + 1
        local = {a["id"]: rank + 1 for rank, a in enumerate(annotations)}
        text_ids = {
            s["sent"]: local[ref["ann_id"]] for ref in self.refs_by_image.get(coco_id, []) for s in ref["sentences"]
        }
        return OracleTruth(labels=labels, num_ids=self._num_ids, text_ids=text_ids)
