"""Synthetic COCO val2017 pool: cluttered scenes of several classes, annotated as COCO instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from imagekv.datasets.files import seeded_subset
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import class_style, random_placement, random_size, render, save_jpeg
from imagekv.io import write_json

CATEGORIES = 20


def rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE with its counts as text, as instances files store it."""
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    images, annotations, oracle = [], [], {}
    for index in range(int(cfg.get("images", 8))):
        coco_id = index + 1
        size = random_size(rng, cfg)
        styles = [int(s) for s in rng.choice(CATEGORIES, size=int(rng.integers(1, 4)), replace=False)]
        pixels, instances = render(
            rng, size, [random_placement(rng, class_style(s), size, (0.12, 0.25)) for s in styles]
        )
        stem = f"{coco_id:012d}"
        save_jpeg(root / "val2017" / f"{stem}.jpg", pixels)
        images.append({"id": coco_id, "file_name": f"{stem}.jpg", "height": size[0], "width": size[1]})
        labels = np.zeros(size, dtype=np.int64)
        for rank, style in enumerate(styles):
            mask = (instances == rank + 1).astype(np.uint8)
            if mask.any():  # a fully hidden object gets no annotation, as in COCO
                annotations.append(
                    {
                        "id": 100 * coco_id + rank,
                        "image_id": coco_id,
                        "category_id": style + 1,
                        "segmentation": rle(mask),
                        "area": int(mask.sum()),
                        "iscrowd": 0,
                    }
                )
                labels[mask > 0] = style + 1
        oracle[stem] = labels
    categories = [{"id": s + 1, "name": class_style(s).shape, "supercategory": "shape"} for s in range(CATEGORIES)]
    write_json(
        root / "annotations" / "instances_val2017.json",
        {"images": images, "annotations": annotations, "categories": categories},
    )
    used = seeded_subset(sorted(oracle), cfg.get("num_images", 500), int(cfg.get("seed", 0)))
    return SyntheticTruth(samples=list(used), image_ids=used, oracle_labels={i: oracle[i] for i in used})
