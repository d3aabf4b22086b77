"""Synthetic twins: every dataset written at smoke size in its REAL on-disk layout.

The smoke run pushes these files through the very loaders that read the real datasets. Each writer
module exposes `write(root, cfg, rng) -> SyntheticTruth`, the ground truth it drew, kept in memory
so tests can compare the loaders' output with what was written without re-reading the files.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagekv.datasets.schema import Sample

WRITERS = ("pascal5i", "msrc", "imagenet_s", "refcoco", "spair", "davis", "blink", "coco_pool")


@dataclass
class SyntheticTruth:
    """What a writer drew: the samples a loader must return, every image id, the query texts, the
    oracle label map of each image whose ids the loader must reproduce exactly, and the exact pixels
    of images a loader hands out itself (BLINK's embedded JPEGs, as decoded)."""

    samples: list[Sample]
    image_ids: list[str]
    texts: list[str] = field(default_factory=list)
    oracle_labels: dict[str, np.ndarray] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)


def synthesize(name: str, root: Path, cfg: dict, seed: int) -> SyntheticTruth:
    """Write dataset `name` into a temporary folder beside `root`, then rename it onto `root`."""
    if name not in WRITERS:
        raise KeyError(f"no synthetic writer for dataset {name!r}; known: {', '.join(WRITERS)}")
    writer = importlib.import_module(f"imagekv.datasets.synthetic.{name}")
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    retired = staging.with_suffix(".retired")
    try:
        truth = writer.write(staging, cfg, np.random.default_rng(seed))
        if root.exists():  # move the old copy aside first: a directory cannot be renamed onto a full one
            os.replace(root, retired)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return truth


def write_synthetic(name: str, root: Path, cfg: dict, seed: int) -> None:
    synthesize(name, root, cfg, seed)
