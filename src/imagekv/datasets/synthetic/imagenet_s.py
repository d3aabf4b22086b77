"""Synthetic ImageNet-S50: the `ImageNetS50` folder the loader reads, for the real wnids of `classes`.

Every validation image the ImageNet-S list names for those classes is drawn (an object of its
folder's class, sometimes a second chosen class, an ignore band around the first) as
`validation/<wnid>/<name>.JPEG`, with its RGB annotation (id = R + G*256, blue 0) in
`validation-segmentation/`. Left out, because the loader reads none of them: train/, train-semi/,
train-semi-segmentation/ and test/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagekv.datasets.imagenet_s import CATEGORIES, IGNORE_ID, class_names, validation_entries
from imagekv.datasets.files import read_lines, seeded_subset
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

IGNORE_BAND = 1.12


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """RGB annotation holding id = R + G*256 (blue stays 0)."""
    return np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    wnids = sorted(read_lines(CATEGORIES))
    names = class_names(wnids)
    chosen = sorted(cfg.get("classes") or wnids)
    class_ids = [wnids.index(w) + 1 for w in chosen]
    listed = sorted(entry for entry in validation_entries() if entry[0].split("/")[0] in chosen)
    queried = set(seeded_subset(listed, cfg.get("max_images"), int(cfg.get("seed", 0))))  # the loader's draw
    samples, oracle = [], {}
    for image, annotation in listed:
        classes = [wnids.index(image.split("/")[0]) + 1]
        if len(chosen) > 1 and rng.random() < 0.5:
            classes.append(int(rng.choice([c for c in class_ids if c != classes[0]])))
        size = random_size(rng, cfg)
        objects = [random_placement(rng, class_style(c), size) for c in classes]
        pixels, instances = render(rng, size, objects)
        ids = np.zeros(size, dtype=np.int64)
        first = objects[0]
        ids[shape_mask(first.style.shape, size, first.center, first.radius * IGNORE_BAND)] = IGNORE_ID
        for index, class_id in enumerate(classes):
            ids[instances == index + 1] = class_id
        save_jpeg(root / "validation" / image, pixels)
        save_png(root / "validation-segmentation" / annotation, encode_ids(ids))
        image_id = image.removesuffix(".JPEG")
        if (image, annotation) in queried:
            for class_id in sorted(set(np.unique(ids).tolist()) - {0, IGNORE_ID}):
                mask = np.where(ids == IGNORE_ID, VOID, ids == class_id).astype(np.uint8)
                samples.append(
                    TextQuery(f"{image_id}#{class_id}", image_id, names[class_id - 1], mask, wnids[class_id - 1])
                )
            oracle[image_id] = np.where(ids == IGNORE_ID, 0, ids)
    texts = [names[c - 1] for c in sorted(class_ids)]
    return SyntheticTruth(samples=samples, image_ids=sorted(oracle), texts=texts, oracle_labels=oracle)
