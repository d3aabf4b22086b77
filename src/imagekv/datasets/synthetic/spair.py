"""Synthetic SPair-71k: one shape per category seen at different scales, places and mirrorings, with
named keypoints fixed in the object's own frame and moved with it.

Written in the published layout with every key of the published JSON files and their types
(integer pixel coordinates, keypoint ids as strings); see imagekv.datasets.spair for the sources.
The segmentation PNGs hold 0 for background and 1 for the object in VOC's palette (inferred: no
loader we know of reads them, the probe does not either).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from imagekv.datasets.files import seeded_subset
from imagekv.datasets.schema import KeypointPair
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import (
    class_style,
    random_placement,
    random_size,
    render,
    save_jpeg,
    save_png,
    voc_palette,
)
from imagekv.io import write_json, write_text

# Keypoints in the object's frame (units of its radius): four corners of the inner square and the centre.
OBJECT_KEYPOINTS = ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (0.0, 0.0))
HIDE_PROBABILITY = 0.3
POSES = ("Frontal", "Left", "Rear", "Right")  # SPair's pose values, with "Unspecified"
SPLITS = ("trn", "val", "test")


@dataclass(frozen=True)
class Instance:
    name: str
    points: dict[int, tuple[int, int]]  # visible keypoints by id, integer pixels
    box: list[int]  # (x0, y0, x1, y1) of the object's pixels
    size: tuple[int, int]  # (height, width)
    mirrored: bool
    pose: str


def write_instance(root: Path, rng: np.random.Generator, cfg: dict, category_index: int, name: str) -> Instance:
    """Draw one object of the category, moved, scaled and maybe mirrored; one keypoint may be hidden."""
    size = random_size(rng, cfg)
    placed = random_placement(rng, class_style(category_index), size, (0.25, 0.4))
    mirrored = bool(rng.random() < 0.5)
    pixels, instances = render(rng, size, [placed])
    sign = -1.0 if mirrored else 1.0
    points = {
        k: (round(placed.center[0] + sign * u * placed.radius), round(placed.center[1] + v * placed.radius))
        for k, (u, v) in enumerate(OBJECT_KEYPOINTS)
    }
    if rng.random() < HIDE_PROBABILITY:
        del points[int(rng.integers(len(OBJECT_KEYPOINTS)))]
    ys, xs = np.nonzero(instances)
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    category, pose = placed.style.shape, POSES[int(rng.integers(len(POSES)))]
    save_jpeg(root / "JPEGImages" / category / f"{name}.jpg", pixels)
    save_png(root / "Segmentation" / category / f"{name}.png", (instances > 0).astype(np.uint8), voc_palette())
    kps = {str(k): list(points[k]) if k in points else None for k in range(len(OBJECT_KEYPOINTS))}
    annotation = {
        "filename": f"{name}.jpg",
        "src_database": "PASCAL VOC 2012",
        "src_annotation": f"VOC2012/Annotations/{name}.xml",
        "src_image": f"VOC2012/JPEGImages/{name}.jpg",
        "image_width": size[1],
        "image_height": size[0],
        "image_depth": 3,
        "category": category,
        "pose": pose,
        "truncated": 0,
        "occluded": 0,
        "difficult": 0,
        "bndbox": box,
        "kps": kps,
        "azimuth_id": int(rng.integers(8)),
    }
    write_json(root / "ImageAnnotation" / category / f"{name}.json", annotation)
    return Instance(name, points, box, size, mirrored, pose)


def write_pair(
    root: Path, split: str, pair_id: int, pair_name: str, category: str, src: Instance, trg: Instance
) -> KeypointPair:
    """The pair annotation over the keypoints visible in both images."""
    shared = sorted(src.points.keys() & trg.points.keys())
    flipped = int(src.mirrored != trg.mirrored)
    annotation = {
        "pair_id": pair_id,
        "filename": pair_name,
        "src_imname": f"{src.name}.jpg",
        "trg_imname": f"{trg.name}.jpg",
        "src_imsize": [src.size[1], src.size[0], 3],
        "trg_imsize": [trg.size[1], trg.size[0], 3],
        "src_bndbox": src.box,
        "trg_bndbox": trg.box,
        "category": category,
        "src_pose": src.pose,
        "trg_pose": trg.pose,
        "src_kps": [list(src.points[k]) for k in shared],
        "trg_kps": [list(trg.points[k]) for k in shared],
        "kps_ids": [str(k) for k in shared],
        "mirror": flipped,
        "viewpoint_variation": flipped,
        "scale_variation": 0,
        "truncation": 0,
        "occlusion": 0,
    }
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
    """Every pair goes to `split`; the other published splits get empty lists, as a layout needs them."""
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
            pair_id = len(layout) + 1
            layout.append(f"{pair_id:06d}-{src.name}-{trg.name}:{category}")
            category_pairs.append(write_pair(root, split, pair_id, layout[-1], category, src, trg))
        pairs += seeded_subset(category_pairs, cfg.get("pairs_per_category", 100), int(cfg.get("seed", 0)))
    for size in ("large", "small"):
        for name in SPLITS if split in SPLITS else (*SPLITS, split):
            listed = "".join(f"{line}\n" for line in layout) if name == split else ""
            write_text(root / "Layout" / size / f"{name}.txt", listed)
    used = sorted({image for pair in pairs for image in (pair.source, pair.target)})
    return SyntheticTruth(samples=pairs, image_ids=used)
