"""Dataset loaders, one per dataset, each parsing the real on-disk layout under its root.

`load_dataset(name, root, cfg)` builds the loader; `TASK_OF_DATASET` says which probe task (or
analysis) each dataset serves. The synthetic twins (`imagekv.datasets.synthetic`) write the same
layouts, so smoke runs go through these very loaders.
"""

from __future__ import annotations

import importlib
from pathlib import Path

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
