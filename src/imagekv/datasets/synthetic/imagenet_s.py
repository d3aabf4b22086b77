"""Synthetic ImageNet-S: one class per wnid folder, some images holding a second class, ignore bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagekv.datasets.schema import VOID, TextQuery
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import (
    class_style,
    random_placement,
    random_size,
    render,
    save_jpeg,
    save_png,
    shape_mask,
)
from imagekv.io import write_text

IGNORE_ID = 1000
IGNORE_BAND = 1.12


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """RGB annotation holding id = R + G*256 (blue stays 0)."""
    return np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    num_classes, per_class = int(cfg.get("num_classes", 3)), int(cfg.get("images_per_class", 2))
    wnids = [f"n{9000000 + i:08d}" for i in range(num_classes)]  # already in sorted order
    names = [class_style(i).name for i in range(num_classes)]
    write_text(root / cfg.get("categories_file", "ImageNetS_categories_im50.txt"), "".join(f"{w}\n" for w in wnids))
    write_text(
        root / cfg.get("names_file", "LOC_synset_mapping.txt"),
        "".join(f"{w} {n}, synthetic {n}\n" for w, n in zip(wnids, names)),
    )
    samples, oracle = [], {}
    for class_index, wnid in enumerate(wnids):
        for image_index in range(per_class):
            size = random_size(rng, cfg)
            classes = [class_index]
            if num_classes > 1 and rng.random() < 0.5:
                classes.append(int(rng.choice([c for c in range(num_classes) if c != class_index])))
            objects = [random_placement(rng, class_style(c), size) for c in classes]
            pixels, instances = render(rng, size, objects)
            ids = np.zeros(size, dtype=np.int64)
            ids[shape_mask(objects[0].style.shape, size, objects[0].center, objects[0].radius * IGNORE_BAND)] = (
                IGNORE_ID
            )
            for index, c in enumerate(classes):
                ids[instances == index + 1] = c + 1
            image_id = f"{wnid}/ILSVRC2012_val_{class_index * per_class + image_index + 1:08d}"
            save_jpeg(root / "validation" / f"{image_id}.JPEG", pixels)
            save_png(root / "validation-segmentation" / f"{image_id}.png", encode_ids(ids))
            for class_id in sorted(set(np.unique(ids).tolist()) - {0, IGNORE_ID}):
                mask = (ids == class_id).astype(np.uint8)
                mask[ids == IGNORE_ID] = VOID
                samples.append(
                    TextQuery(f"{image_id}#{class_id}", image_id, names[class_id - 1], mask, wnids[class_id - 1])
                )
            oracle[image_id] = np.where(ids == IGNORE_ID, 0, ids)
    return SyntheticTruth(samples=samples, image_ids=sorted(oracle), texts=names, oracle_labels=oracle)
