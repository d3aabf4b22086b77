"""Synthetic MSRC: sets of images sharing one class object, with distractors of other classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagekv.datasets.schema import CosegSet
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import class_style, random_placement, random_size, render, save_jpeg, save_png

DISTRACTOR_STYLES = range(20, 40)  # styles no set class uses


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    folder = root / cfg.get("collection", "MSRC")
    sets, per_set = int(cfg.get("sets", 3)), int(cfg.get("images_per_set", 4))
    styles = sorted((class_style(i) for i in range(sets)), key=lambda style: style.shape)  # loader order
    samples, oracle = [], {}
    for set_index, style in enumerate(styles):
        class_name = style.shape
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
            save_jpeg(folder / class_name / f"{stem}.jpg", pixels)
            save_png(folder / class_name / "GroundTruth" / f"{stem}.png", mask * 255)
            image_ids.append(f"{class_name}/{stem}")
            masks.append(mask)
            oracle[image_ids[-1]] = mask.astype(np.int64) * (set_index + 1)
        samples.append(CosegSet(class_name, class_name, tuple(image_ids), tuple(masks)))
    return SyntheticTruth(samples=samples, image_ids=sorted(oracle), oracle_labels=oracle)
