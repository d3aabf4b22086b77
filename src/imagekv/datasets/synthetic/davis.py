"""Synthetic DAVIS-2017: short clips of distinct objects moving in straight lines over a fixed backdrop."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagekv.datasets.schema import VideoClip
from imagekv.datasets.synthetic import SyntheticTruth
from imagekv.datasets.synthetic.draw import (
    Placement,
    class_style,
    random_placement,
    random_size,
    render,
    save_jpeg,
    save_png,
    voc_palette,
)
from imagekv.io import write_text


def write(root: Path, cfg: dict, rng: np.random.Generator) -> SyntheticTruth:
    resolution, split, year = cfg.get("resolution", "480p"), cfg.get("split", "val"), str(cfg.get("year", 2017))
    frames = int(cfg.get("frames", 4))
    clips, oracle = [], {}
    for clip_index in range(int(cfg.get("clips", 2))):
        seq = f"clip-{clip_index + 1:02d}"
        size = random_size(rng, cfg)
        styles = rng.choice(20, size=int(cfg.get("objects_per_clip", 2)), replace=False)
        starts = [random_placement(rng, class_style(int(s)), size, (0.15, 0.22)) for s in styles]
        steps = [rng.uniform(-0.04, 0.04, size=2) * np.array(size[::-1]) for _ in starts]
        backdrop_seed = int(rng.integers(2**31))
        frame_ids, label_maps = [], []
        for t in range(frames):
            objects = [
                Placement(p.style, (p.center[0] + t * dx, p.center[1] + t * dy), p.radius)
                for p, (dx, dy) in zip(starts, steps)
            ]
            pixels, labels = render(np.random.default_rng(backdrop_seed), size, objects)  # same backdrop every frame
            name = f"{t:05d}"
            save_jpeg(root / "JPEGImages" / resolution / seq / f"{name}.jpg", pixels)
            save_png(root / "Annotations" / resolution / seq / f"{name}.png", labels, voc_palette())
            frame_ids.append(f"{seq}/{name}")
            label_maps.append(labels)
            oracle[frame_ids[-1]] = labels.astype(np.int64)
        clips.append(VideoClip(seq, tuple(frame_ids), tuple(label_maps)))
    write_text(root / "ImageSets" / year / f"{split}.txt", "".join(f"{c.clip_id}\n" for c in clips))
    return SyntheticTruth(samples=clips, image_ids=sorted(oracle), oracle_labels=oracle)
