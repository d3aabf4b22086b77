"""RefCOCO (UNC splits) referring expressions (T4): the instance mask each sentence names.

Layout under `root`, the `data` folder of lichengunc/refer (read: refer.py and data/README.md):
`refcoco/refs(unc).p`, `refcoco/instances.json` and the COCO train2014 images in
`images/mscoco/images/train2014/`. The refs pickle (read only through the plain-data unpickler) is a
list of dicts ref_id, ann_id, image_id, split, category_id, file_name, sent_ids and sentences
[{tokens, raw, sent_id, sent}] (read: refer.py's createIndex); instances.json holds COCO images,
annotations and categories, RefCOCO's segmentations being polygons (read: refer.py's getMask; RLE
is decoded too). A seeded fixed list of `num_expressions` sentences of `split`.

Checked on first use, each error naming the file and the item: every ref's keys, ann_id (an
annotation of the ref's image) and category_id (a category of instances.json); every annotation's
category and mask size; every image's height and width in instances.json against its JPEG.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from imagekv.datasets.files import DatasetFileError, image_size, read_json, require, seeded_subset
from imagekv.datasets.safe_pickle import load_plain_pickle
from imagekv.datasets.schema import ImageRef, OracleTruth, TextQuery

IMAGE_FOLDER = Path("images/mscoco/images/train2014")
PUBLISHED_ROOT = (
    "refer's data folder: refcoco/refs(unc).p, refcoco/instances.json and the COCO train2014 images in "
    "images/mscoco/images/train2014/"
)
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "category_id", "sentences")
SENTENCE_KEYS = ("sent_id", "sent")


def coco_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):  # polygons: one RLE per polygon, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif not isinstance(segmentation, dict):
        raise TypeError(f"a segmentation is a list of polygons or an RLE dict, not a {type(segmentation).__name__}")
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(np.uint8)


def read_refs(path: Path) -> list[dict]:
    refs = load_plain_pickle(require(path))
    if not isinstance(refs, list):
        raise DatasetFileError(f"{path} holds a {type(refs).__name__}, expected a list of refs")
    for index, ref in enumerate(refs):
        if not isinstance(ref, dict) or any(k not in ref for k in REF_KEYS):
            raise DatasetFileError(f"{path}: ref #{index} is not a dict with the keys {list(REF_KEYS)}")
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or any(
            not isinstance(s, dict) or any(k not in s for k in SENTENCE_KEYS) for s in sentences
        ):
            raise DatasetFileError(f"{path}: ref {ref['ref_id']}: sentences are not dicts with {list(SENTENCE_KEYS)}")
    return refs


class RefCoco:
    name = "refcoco"
    task = "referring_seg"
    PUBLISHED_ROOT = PUBLISHED_ROOT

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        folder = self.root / cfg.get("dataset", "refcoco")
        self.instances_file = folder / "instances.json"
        self.refs_file = folder / cfg.get("refs_file", "refs(unc).p")
        split = cfg.get("split", "val")
        refs = [r for r in read_refs(self.refs_file) if r["split"] == split]
        sentences = [(ref, sentence) for ref in refs for sentence in ref["sentences"]]
        if not sentences:
            raise DatasetFileError(f"{self.refs_file} has no referring expressions in split {split!r}")
        self.sentences = seeded_subset(sentences, cfg.get("num_expressions", 1000), int(cfg.get("seed", 0)))
        self.refs_by_image: dict[int, list[dict]] = {}
        for ref in refs:
            self.refs_by_image.setdefault(ref["image_id"], []).append(ref)

    @cached_property
    def _image_ids(self) -> list[int]:
        """COCO ids of the images the chosen sentences refer to."""
        return sorted({ref["image_id"] for ref, _ in self.sentences})

    @cached_property
    def _coco(self) -> tuple[dict[int, dict], dict[int, list[dict]], dict[int, str]]:
        """Images by id, their annotations (sorted by id) and category names, for the images in use;
        checked against the refs and the JPEGs."""
        data = read_json(self.instances_file)
        try:
            wanted = set(self._image_ids)
            images = {image["id"]: image for image in data["images"] if image["id"] in wanted}
            categories = {c["id"]: c["name"] for c in data["categories"]}
            annotations: dict[int, list[dict]] = {image_id: [] for image_id in images}
            image_of_annotation = {}
            for annotation in data["annotations"]:
                image_of_annotation[annotation["id"]] = annotation["image_id"]
                if annotation["image_id"] in annotations:
                    annotations[annotation["image_id"]].append(annotation)
        except (KeyError, TypeError) as error:
            raise DatasetFileError(f"{self.instances_file} is not a COCO instances file: {error!r}") from error
        missing = wanted - images.keys()
        if missing:
            raise DatasetFileError(
                f"{self.instances_file} lacks images {sorted(missing)[:5]} named by the refs in {self.refs_file}"
            )
        for listed in annotations.values():
            listed.sort(key=lambda a: a["id"])
            self._check_categories(listed, categories)
        self._check_refs(image_of_annotation, categories)
        for image in images.values():
            self._check_size(image)
        return images, annotations, categories

    def _check_refs(self, image_of_annotation: dict[int, int], categories: dict[int, str]) -> None:
        for ref in (ref for image_id in self._image_ids for ref in self.refs_by_image[image_id]):
            where = f"{self.refs_file}: ref {ref['ref_id']}"
            if ref["ann_id"] not in image_of_annotation:
                raise DatasetFileError(
                    f"{where} names ann_id {ref['ann_id']}, which {self.instances_file} does not hold"
                )
            if image_of_annotation[ref["ann_id"]] != ref["image_id"]:
                raise DatasetFileError(
                    f"{where} names ann_id {ref['ann_id']} of image {ref['image_id']}, but in "
                    f"{self.instances_file} that annotation belongs to image {image_of_annotation[ref['ann_id']]}"
                )
            if ref["category_id"] not in categories:
                raise DatasetFileError(
                    f"{where} has category_id {ref['category_id']}, which is not among the "
                    f"{len(categories)} categories of {self.instances_file}"
                )

    def _check_categories(self, annotations: list[dict], categories: dict[int, str]) -> None:
        for annotation in annotations:
            if annotation.get("category_id") not in categories:
                raise DatasetFileError(
                    f"{self.instances_file}: annotation {annotation['id']} has category_id "
                    f"{annotation.get('category_id')}, which is not among its {len(categories)} categories"
                )

    def _image_path(self, image: dict) -> Path:
        return require(self.root / IMAGE_FOLDER / image["file_name"])

    def _check_size(self, image: dict) -> None:
        path = self._image_path(image)
        listed = (image.get("height"), image.get("width"))
        if image_size(path) != listed:
            raise DatasetFileError(
                f"{self.instances_file}: image {image['id']} has height, width {listed}, "
                f"but {path} is {image_size(path)}"
            )

    def _image_id(self, coco_id: int) -> str:
        return Path(self._coco[0][coco_id]["file_name"]).stem

    def _annotation(self, coco_id: int, ann_id: int) -> dict:
        return next(a for a in self._coco[1][coco_id] if a["id"] == ann_id)  # _check_refs saw it there

    def _mask(self, coco_id: int, annotation: dict) -> np.ndarray:
        image = self._coco[0][coco_id]
        try:
            mask = coco_mask(annotation["segmentation"], image["height"], image["width"])
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise DatasetFileError(
                f"{self.instances_file}: annotation {annotation['id']} has no readable segmentation: {error!r}"
            ) from error
        if mask.shape != (image["height"], image["width"]):  # an RLE carries its own size
            raise DatasetFileError(
                f"{self.instances_file}: annotation {annotation['id']} is a {mask.shape} mask on image "
                f"{coco_id} of height, width {(image['height'], image['width'])}"
            )
        return mask

    def images(self) -> list[ImageRef]:
        refs = [ImageRef(self._image_id(i), self._image_path(self._coco[0][i])) for i in self._image_ids]
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
                category=self._coco[2][ref["category_id"]],
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
