"""Name -> backbone class. Each backbone module registers itself with `@register("name")`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from imagekv.models.base import Backbone

_REGISTRY: dict[str, type[Backbone]] = {}

# Backbone name -> the module that registers it, imported on first lookup of that name only: a
# calibration or SigLIP job never pays for importing the MLM classes of transformers (seconds per job).
BACKBONE_MODULES = {
    "llava_onevision": "imagekv.models.llava_onevision",
    "qwen2_5_vl": "imagekv.models.qwen2_5_vl",
    "llava_next": "imagekv.models.llava_next",
    "siglip": "imagekv.models.siglip",
    "clip": "imagekv.models.clip",
    "oracle": "imagekv.models.calibration",
    "noise": "imagekv.models.calibration",
}


def register(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    def decorate(cls: type[Backbone]) -> type[Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def backbone_names() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def backbone_class(name: str) -> type[Backbone]:
    if name not in BACKBONE_MODULES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONE_MODULES))}")
    importlib.import_module(BACKBONE_MODULES[name])
    return _REGISTRY[name]


def build_backbone(
    name: str, cfg: dict[str, Any], *, device: str, dtype: torch.dtype, dataset: Any = None
) -> Backbone:
    """Instantiate backbone `name` from its config section (see config/config.yaml `models:`)."""
    return backbone_class(name).from_config(cfg, device=device, dtype=dtype, dataset=dataset)


def _import_all() -> None:
    for module in sorted(set(BACKBONE_MODULES.values())):
        importlib.import_module(module)
