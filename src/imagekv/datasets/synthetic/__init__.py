"""Synthetic twins: every dataset written at smoke size in its REAL on-disk layout.

The smoke run pushes these files through the very loaders that read the real datasets. Each writer
module exposes `write(root, cfg, rng) -> SyntheticTruth`, the ground truth it drew, kept in memory
so tests can compare the loaders' output with what was written without re-reading the files.
"""

from __future__ import annotations

import importlib
import os
import shutil
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
    """Write dataset `name` into the staging folder `.{root.name}.partial` beside `root`, then rename it
    onto `root`.

    The staging and retired folders have fixed names, so the leftovers of a killed run (SIGKILL skips
    the cleanup below) are recognised and cleared first: one job writes each dataset, so they can only
    be stale. They are made by a plain mkdir, so their mode follows the umask.
    """
    if name not in WRITERS:
        raise KeyError(f"no synthetic writer for dataset {name!r}; known: {', '.join(WRITERS)}")
    writer = importlib.import_module(f"imagekv.datasets.synthetic.{name}")
    root = Path(root)
    staging, retired = (root.with_name(f".{root.name}.{state}") for state in ("partial", "retired"))
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
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
