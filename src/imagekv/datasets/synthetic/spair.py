"""Synthetic SPair-71k: one shape per category seen at different scales, places and mirrorings, with
named keypoints fixed in the object's own frame and moved with it."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from imagekv.datasets.files import seeded_subset
from imagekv.datasets.schema import KeypointPair
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import class_style, random_placement, random_size, render, save_jpeg
from imagekv.io import write_json, write_text

# Keypoints in the object's frame (units of its radius): four corners of the inner square and the centre.
OBJECT_KEYPOINTS = ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (0.0, 0.0))
HIDE_PROBABILITY = 0.3


@dataclass(frozen=True)
class Instance:
    name: str
    points: dict[int, tuple[float, float]]  # visible keypoints by id
    box: list[int]  # (x0, y0, x1, y1) of the object's pixels
    mirrored: bool


def write_instance(root: Path, rng: np.random.Generator, cfg: dict, category_index: int, name: str) -> Instance:
    """Draw one object of the category, moved, scaled and maybe mirrored; one keypoint may be hidden."""
    size = random_size(rng, cfg)
    placed = random_placement(rng, class_style(category_index), size, (0.25, 0.4))
    mirrored = bool(rng.random() < 0.5)
    pixels, instances = render(rng, size, [placed])
    sign = -1.0 if mirrored else 1.0
    points = {
        k: (round(placed.center[0] + sign * u * placed.radius, 2), round(placed.center[1] + v * placed.radius, 2))
        for k, (u, v) in enumerate(OBJECT_KEYPOINTS)
    }
    if rng.random() < HIDE_PROBABILITY:
        del points[int(rng.integers(len(OBJECT_KEYPOINTS)))]
    ys, xs = np.nonzero(instances)
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    category = placed.style.shape
    save_jpeg(root / "JPEGImages" / category / f"{name}.jpg", pixels)
    kps = {str(k): list(points[k]) if k in points else None for k in range(len(OBJECT_KEYPOINTS))}
    annotation = {"filename": f"{name}.jpg", "category": category, "bndbox": box, "kps": kps}
    write_json(root / "ImageAnnotation" / category / f"{name}.json", annotation)
    return Instance(name, points, box, mirrored)


def write_pair(root: Path, split: str, pair_name: str, category: str, src: Instance, trg: Instance) -> KeypointPair:
    """The pair annotation over the keypoints visible in both images."""
    shared = sorted(src.points.keys() & trg.points.keys())
    flipped = int(src.mirrored != trg.mirrored)
    annotation = {"filename": pair_name, "category": category, "src_imname": f"{src.name}.jpg"}
    annotation |= {"trg_imname": f"{trg.name}.jpg", "src_bndbox": src.box, "trg_bndbox": trg.box, "kps_ids": shared}
    annotation |= {"src_kps": [list(src.points[k]) for k in shared], "trg_kps": [list(trg.points[k]) for k in shared]}
    annotation |= {"mirror": flipped, "viewpoint_variation": flipped}
    write_json(root / "PairAnnotation" / split / f"{pair_name}.json", annotation)
    return KeypointPair(
        pair_id=pair_name,
        category=category,
        source=f"{category}/{src.name}",
        target=f"{category}/{trg.name}",
        source_points=np.array([src.points[k] for k in shared], dtype=np.float64).reshape(-1, 2),
        target_points=np.array([trg.points[k] for k in shared], dtype=np.float64).reshape(-1, 2),
        keypoint_names=tuple(str(k) for k in shared),
        target_bbox=tuple(float(v) for v in trg.box),
        viewpoint_variation=flipped,
    )


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    split = cfg.get("split", "test")
    per_category = int(cfg.get("images_per_category", 3))
    layout, pairs = [], []
    for category_index in range(int(cfg.get("num_categories", 2))):
        category = class_style(category_index).shape
        instances = [
            write_instance(root, rng, cfg, category_index, f"{category_index + 1:02d}{image_index + 1:04d}")
            for image_index in range(per_category)
        ]
        category_pairs = []
        for src, trg in combinations(instances, 2):
            layout.append(f"{len(layout) + 1:06d}-{src.name}-{trg.name}:{category}")
            category_pairs.append(write_pair(root, split, layout[-1], category, src, trg))
        pairs += seeded_subset(category_pairs, cfg.get("pairs_per_category", 100), int(cfg.get("seed", 0)))
    write_text(root / "Layout" / "large" / f"{split}.txt", "".join(f"{line}\n" for line in layout))
    used = sorted({image for pair in pairs for image in (pair.source, pair.target)})
    return SyntheticTruth(samples=pairs, image_ids=used)
