"""Synthetic Pascal-5i: VOC layout, each VOC class a distinct textured shape, void bands around objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagekv.datasets.pascal5i import VOC_CLASSES, build_episodes, episode_file, fold_classes
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
from imagekv.io import write_json, write_text

VOID_BAND = 1.12  # void ring out to this multiple of the object radius, like VOC's object outlines


def draw_labels(rng: np.random.Generator, cfg: dict, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One image holding objects of `classes` (VOC indices), with its VOC class map."""
    size = random_size(rng, cfg)
    objects = [random_placement(rng, class_style(c), size) for c in classes]
    pixels, instances = render(rng, size, objects)
    labels = np.zeros(size, dtype=np.uint8)
    for placed in objects:
        labels[shape_mask(placed.style.shape, size, placed.center, placed.radius * VOID_BAND)] = VOID
    for index, class_index in enumerate(classes):
        labels[instances == index + 1] = class_index
    return pixels, labels


def class_mask(labels: np.ndarray, class_index: int) -> np.ndarray:
    mask = (labels == class_index).astype(np.uint8)
    mask[labels == VOID] = VOID
    return mask


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    folds = [int(f) for f in cfg.get("folds", [0, 1, 2, 3])]
    shots, count = int(cfg.get("shots", 5)), int(cfg.get("episodes_per_fold", 250))
    split, seed = cfg.get("split", "val"), int(cfg.get("seed", 0))
    per_class = int(cfg.get("images_per_class", shots + 1))
    used = [c for fold in folds for c in fold_classes(fold)]
    label_maps: dict[str, np.ndarray] = {}
    for class_index in used:
        for _ in range(per_class):
            distractor = [int(rng.choice([c for c in used if c != class_index]))] if rng.random() < 0.5 else []
            pixels, labels = draw_labels(rng, cfg, [class_index, *distractor])
            name = f"2012_{len(label_maps):06d}"
            save_jpeg(root / "JPEGImages" / f"{name}.jpg", pixels)
            save_png(root / cfg.get("mask_dir", "SegmentationClassAug") / f"{name}.png", labels, voc_palette())
            label_maps[name] = labels
    write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in label_maps))
    presence = {name: set(np.unique(labels).tolist()) for name, labels in label_maps.items()}
    samples = []
    for fold in folds:
        episodes = build_episodes(presence, fold, shots, count, seed)
        write_json(episode_file(root, fold, split, shots, count, seed), {"fold": fold, "episodes": episodes})
        for index, episode in enumerate(episodes):
            c = episode["class_index"]
            samples.append(
                SegEpisode(
                    episode_id=f"fold{fold}_{index:04d}",
                    fold=fold,
                    class_name=VOC_CLASSES[c],
                    query=episode["query"],
                    query_mask=class_mask(label_maps[episode["query"]], c),
                    support=tuple(episode["support"]),
                    support_masks=tuple(class_mask(label_maps[s], c) for s in episode["support"]),
                )
            )
    used_ids = sorted({s.query for s in samples} | {n for s in samples for n in s.support})
    oracle = {name: np.where(label_maps[name] == VOID, 0, label_maps[name]).astype(np.int64) for name in used_ids}
    return SyntheticTruth(samples=samples, image_ids=used_ids, oracle_labels=oracle)
