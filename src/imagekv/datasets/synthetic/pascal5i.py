"""Synthetic Pascal-5i: the `VOCdevkit/VOC2012` folder the loader reads, for the images hsnet's fold
lists name that the seeded episodes use.

Each image holds every class the four fold lists give it (a distinct textured shape per VOC class)
with a void band around each object, like VOC's outlines; masks are palette PNGs (mode P, VOC colour
map) of class indices, as in `SegmentationClass`. `ImageSets/Segmentation/val.txt` lists every image
of the fold lists. Left out, because the loader reads none of them: VOC's other folders
(Annotations/, SegmentationObject/, ...) and the train / trainval lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagekv.datasets.pascal5i import VOC_CLASSES, binary_mask, draw_episodes, fold_entries
from imagekv.datasets.schema import VOID, SegEpisode
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import (
    class_style,
    random_placement,
    random_size,
    render,
    save_jpeg,
    save_png,
    shape_mask,
    voc_palette,
)
from imagekv.io import write_text

VOID_BAND = 1.12  # void ring out to this multiple of the object radius, like VOC's object outlines
MIN_VISIBLE = 20  # pixels of each listed class left visible after occlusion


def draw_labels(rng: np.random.Generator, cfg: dict, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One image holding objects of `classes` (VOC indices), each visible, with its VOC class map."""
    size = random_size(rng, cfg)
    while True:
        objects = [random_placement(rng, class_style(c), size, (0.14, 0.24)) for c in classes]
        pixels, instances = render(rng, size, objects)
        if all((instances == index + 1).sum() >= MIN_VISIBLE for index in range(len(classes))):
            break
    labels = np.zeros(size, dtype=np.uint8)
    for placed in objects:
        labels[shape_mask(placed.style.shape, size, placed.center, placed.radius * VOID_BAND)] = VOID
    for index, class_index in enumerate(classes):
        labels[instances == index + 1] = class_index
    return pixels, labels


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    folds = [int(f) for f in cfg.get("folds", [0, 1, 2, 3])]
    shots, count, seed = int(cfg.get("shots", 5)), int(cfg.get("episodes_per_fold", 250)), int(cfg.get("seed", 0))
    listed: dict[str, set[int]] = {}
    for fold in range(4):
        for name, class_index in fold_entries(fold):
            listed.setdefault(name, set()).add(class_index)
    episodes = {fold: draw_episodes(fold_entries(fold), fold, shots, count, seed) for fold in folds}
    used = sorted({name for eps in episodes.values() for e in eps for name in (e["query"], *e["support"])})
    label_maps = {}
    for name in used:
        pixels, labels = draw_labels(rng, cfg, sorted(listed[name]))
        save_jpeg(root / "JPEGImages" / f"{name}.jpg", pixels)
        save_png(root / cfg.get("mask_dir", "SegmentationClass") / f"{name}.png", labels, voc_palette())
        label_maps[name] = labels
    write_text(root / "ImageSets" / "Segmentation" / "val.txt", "".join(f"{n}\n" for n in sorted(listed)))
    samples = [
        SegEpisode(
            episode_id=f"fold{fold}_{index:04d}",
            fold=fold,
            class_name=VOC_CLASSES[e["class_index"]],
            query=e["query"],
            query_mask=binary_mask(label_maps[e["query"]], e["class_index"]),
            support=tuple(e["support"]),
            support_masks=tuple(binary_mask(label_maps[s], e["class_index"]) for s in e["support"]),
        )
        for fold, eps in episodes.items()
        for index, e in enumerate(eps)
    ]
    oracle = {name: np.where(labels == VOID, 0, labels).astype(np.int64) for name, labels in label_maps.items()}
    return SyntheticTruth(samples=samples, image_ids=used, oracle_labels=oracle)
