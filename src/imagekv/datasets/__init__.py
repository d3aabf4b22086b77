"""Dataset loaders, one per dataset, each parsing the real on-disk layout under its root.

`load_dataset(name, root, cfg)` builds the loader; `TASK_OF_DATASET` says which probe task (or
analysis) each dataset serves. `root` is the folder as the publisher's archive unpacks (each loader's
`PUBLISHED_ROOT` says which), whether the user already has it, the download rule installed it or a
synthetic twin (`imagekv.datasets.synthetic`) wrote it: smoke runs go through these very loaders.
Loaders only read under `root`; what they derive (episodes, caches) stays in memory or in results.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from imagekv.datasets.files import DatasetFileError
from imagekv.datasets.schema import Dataset

_LOADERS = {
    "pascal5i": ("imagekv.datasets.pascal5i", "Pascal5i"),
    "msrc": ("imagekv.datasets.msrc", "Msrc"),
    "imagenet_s": ("imagekv.datasets.imagenet_s", "ImageNetS"),
    "refcoco": ("imagekv.datasets.refcoco", "RefCoco"),
    "spair": ("imagekv.datasets.spair", "SPair"),
    "davis": ("imagekv.datasets.davis", "Davis"),
    "blink": ("imagekv.datasets.blink", "Blink"),
    "coco_pool": ("imagekv.datasets.coco_pool", "CocoPool"),
}
DATASET_NAMES = tuple(_LOADERS)
TASK_OF_DATASET = {
    "pascal5i": "fewshot_seg",
    "msrc": "coseg",
    "imagenet_s": "semantic_seg",
    "refcoco": "referring_seg",
    "spair": "semantic_corr",
    "davis": "temporal_corr",
    "blink": "blink",  # E4 blocking evaluation and E6 value read-out, not a layer-wise probe
    "coco_pool": "key_variance",  # E4 input-agnostic key detection
}


def load_dataset(name: str, root: Path, cfg: dict) -> Dataset:
    """The loader of dataset `name` reading `root`; `cfg` is its `datasets.<name>` section."""
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    module, cls = _LOADERS[name]
    return getattr(importlib.import_module(module), cls)(Path(root), {k: v for k, v in cfg.items() if k != "source"})


def check_dataset(name: str, root: Path, cfg: dict) -> dict:
    """Open a user's copy once before any job reads it: every image and annotation the run uses is
    parsed and validated; an error names the file and the folder `root` must be. Returns a summary."""
    root = Path(root)
    try:
        if not root.is_dir():
            raise DatasetFileError(f"{root} is not a folder")
        dataset = load_dataset(name, root, cfg)
        images = dataset.images()
        for ref in images:
            if not ref.path.is_file():
                raise DatasetFileError(f"missing dataset file: {ref.path}")
        samples = sum(1 for _ in dataset.samples())
    except DatasetFileError as error:
        raise DatasetFileError(f"{error}\n(datasets.{name}.root must be {published_root(name)})") from error
    return {"dataset": name, "root": str(root), "images": len(images), "samples": samples}


def published_root(name: str) -> str:
    """What a dataset's root holds, as its loader's `PUBLISHED_ROOT` says."""
    module, cls = _LOADERS[name]
    return getattr(getattr(importlib.import_module(module), cls), "PUBLISHED_ROOT", "the folder its archive unpacks to")
