"""Synthetic RefCOCO in the refer layout: 2-3 distinct objects per image, each singled out by colour,
shape and position.

`refcoco/refs(unc).p` (pickle, protocol 2: the protocol of the real file is not known, inferred),
`refcoco/instances.json` (COCO format with polygon segmentations, as refer's data has) and the images
under `images/mscoco/images/train2014/` (see imagekv.datasets.refcoco for the sources). Each object
is painted through its own polygons, so the annotation is exact.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from imagekv.datasets.files import seeded_subset
from imagekv.datasets.refcoco import IMAGE_FOLDER
from imagekv.datasets.schema import TextQuery
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import (
    Placement,
    backdrop,
    class_style,
    paint,
    random_size,
    save_jpeg,
    shape_polygons,
)
from imagekv.io import atomic_path, write_json

POSITIONS = {2: ("left", "right"), 3: ("left", "middle", "right")}
STYLES = 20
OTHER_SPLIT_EVERY = 4  # every 4th image goes to testA, so split filtering is exercised


def place_in_slots(rng: np.random.Generator, styles: list[int], size: tuple[int, int]) -> list[Placement]:
    """One object per vertical slot, left to right, never overlapping."""
    height, width = size
    slot = width / len(styles)
    placements = []
    for index, style in enumerate(styles):
        radius = float(rng.uniform(0.6, 0.85)) * min(slot / 2, height * 0.35)
        x = (index + 0.5) * slot + float(rng.uniform(-1, 1)) * (slot / 2 - radius)
        placements.append(Placement(class_style(style), (x, float(rng.uniform(radius, height - radius))), radius))
    return placements


def sentences_for(placed: Placement, position: str) -> list[str]:
    where = "in the middle" if position == "middle" else f"on the {position}"
    return [f"the {placed.style.colour} {placed.style.shape} {where}", f"{position} {placed.style.name}"]


def polygon_mask(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """The uint8 mask COCO's reference rasteriser (pycocotools) draws for `polygons`."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, *size))).astype(np.uint8)


def records(
    coco_id: int, rank: int, style: int, polygons: list[list[float]], mask: np.ndarray, sentences: list[str], split: str
) -> tuple[dict, dict]:
    """The COCO annotation of one object and the UNC ref that names it (fields as refer.py reads them)."""
    ann_id = 1000 * coco_id + rank
    bbox = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))
    annotation = {"id": ann_id, "image_id": coco_id, "category_id": style + 1, "segmentation": polygons}
    annotation |= {"area": float(mask.sum()), "bbox": [float(v) for v in bbox], "iscrowd": 0}
    sentence_records = [
        {"tokens": s.split(), "raw": f"{s.capitalize()}.", "sent": s, "sent_id": 10 * ann_id + k}
        for k, s in enumerate(sentences)
    ]
    ref = {
        "ann_id": ann_id,
        "image_id": coco_id,
        "split": split,
        "category_id": style + 1,
        "sentences": sentence_records,
        "file_name": f"COCO_train2014_{coco_id:012d}_{ann_id}.jpg",
        "sent_ids": [s["sent_id"] for s in sentence_records],
    }
    return annotation, ref


def image_record(coco_id: int, file_name: str, size: tuple[int, int]) -> dict:
    """A COCO 2014 image entry with every field the official instances files carry."""
    return {
        "id": coco_id,
        "file_name": file_name,
        "height": size[0],
        "width": size[1],
        "license": 1,
        "coco_url": f"http://images.cocodataset.org/train2014/{file_name}",
        "flickr_url": "",
        "date_captured": "2013-11-14 16:28:13",
    }


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    split = cfg.get("split", "val")
    folder = root / cfg.get("dataset", "refcoco")
    images, annotations, refs, queries, oracle = [], [], [], [], {}
    for image_index in range(int(cfg.get("images", 6))):
        coco_id = image_index + 1
        size = random_size(rng, cfg)
        styles = [int(s) for s in rng.choice(STYLES, size=int(rng.integers(2, 4)), replace=False)]
        objects = place_in_slots(rng, styles, size)
        pixels, instances = backdrop(rng, size), np.zeros(size, dtype=np.int64)
        file_name = f"COCO_train2014_{coco_id:012d}.jpg"
        images.append(image_record(coco_id, file_name, size))
        image_split = "testA" if image_index % OTHER_SPLIT_EVERY == OTHER_SPLIT_EVERY - 1 else split
        for rank, (placed, position) in enumerate(zip(objects, POSITIONS[len(objects)])):
            polygons = shape_polygons(placed.style.shape, placed.center, placed.radius)
            mask = polygon_mask(polygons, size)
            paint(pixels, mask > 0, placed.style)
            instances[mask > 0] = rank + 1  # later objects cover earlier ones, as the loader paints them
            annotation, ref = records(
                coco_id, rank, styles[rank], polygons, mask, sentences_for(placed, position), image_split
            )
            annotations.append(annotation)
            refs.append({"ref_id": len(refs), **ref})
            if image_split == split:
                stem, category = Path(file_name).stem, placed.style.name
                queries += [TextQuery(str(s["sent_id"]), stem, s["sent"], mask, category) for s in ref["sentences"]]
        save_jpeg(root / IMAGE_FOLDER / file_name, pixels)
        oracle[Path(file_name).stem] = instances
    categories = [{"id": s + 1, "name": class_style(s).name, "supercategory": "shape"} for s in range(STYLES)]
    write_json(folder / "instances.json", {"images": images, "annotations": annotations, "categories": categories})
    with atomic_path(folder / cfg.get("refs_file", "refs(unc).p")) as tmp:
        tmp.write_bytes(pickle.dumps(refs, protocol=2))
    queries = seeded_subset(queries, cfg.get("num_expressions", 1000), int(cfg.get("seed", 0)))
    used = sorted({q.image_id for q in queries})
    texts = list(dict.fromkeys(q.text for q in queries))
    return SyntheticTruth(samples=queries, image_ids=used, texts=texts, oracle_labels={i: oracle[i] for i in used})
