"""Synthetic MSRC: the Object Discovery `Data/` folder, `MSRC/<class>/<n>_<i>_s.bmp` (24-bit BMP)
with 0/255 grey PNG masks in `GroundTruth/`; each set shares one class object, some images hold a
distractor of another style behind it. Class folder names are MSRC object classes [I] (see the
loader's docstring for what is inferred); the archive's other collections are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imagekv.datasets.msrc import FOREGROUND
from imagekv.datasets.schema import CosegSet
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import class_style, random_placement, random_size, render, save_png

DISTRACTOR_STYLES = range(20, 40)  # styles no set class uses
CLASS_NAMES = ("airplane", "bicycle", "bird", "car", "cat", "chair", "cow", "dog", "face", "flower", "house", "sheep")


def save_bmp(path: Path, pixels: np.ndarray) -> None:
    """A 24-bit BMP, as MSRC ships its images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="BMP")  # uint8 [H, W, 3]: 24 bits per pixel


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    folder = root / cfg.get("collection", "MSRC")
    sets, per_set = int(cfg.get("sets", 3)), int(cfg.get("images_per_set", 4))
    if sets > len(CLASS_NAMES):
        raise ValueError(f"synthetic MSRC has {len(CLASS_NAMES)} classes, not {sets}")
    samples, oracle = [], {}
    for set_index, class_name in enumerate(CLASS_NAMES[:sets]):  # already in the loader's (sorted) order
        style = class_style(set_index)
        image_ids, masks = [], []
        for image_index in range(per_set):
            size = random_size(rng, cfg)
            objects = [random_placement(rng, style, size)]
            if rng.random() < 0.5:  # an unrelated object drawn behind the common one
                objects.insert(
                    0, random_placement(rng, class_style(int(rng.choice(DISTRACTOR_STYLES))), size, (0.12, 0.2))
                )
            pixels, instances = render(rng, size, objects)
            mask = (instances == len(objects)).astype(np.uint8)
            stem = f"{set_index + 1}_{image_index + 1}_s"
            save_bmp(folder / class_name / f"{stem}.bmp", pixels)
            save_png(folder / class_name / "GroundTruth" / f"{stem}.png", mask * FOREGROUND)
            image_ids.append(f"{class_name}/{stem}")
            masks.append(mask)
            oracle[image_ids[-1]] = mask.astype(np.int64) * (set_index + 1)
        samples.append(CosegSet(class_name, class_name, tuple(image_ids), tuple(masks)))
    return SyntheticTruth(samples=samples, image_ids=sorted(oracle), oracle_labels=oracle)
