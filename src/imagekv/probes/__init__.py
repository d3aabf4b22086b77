"""The six probes: task key -> run function, and the one entry point `run_probe`.

Every run function takes the task's samples, a feature source with the representation already
bound, and the probe's hyperparameters, and returns tidy rows
{"layer": int, "metric": str, "value": float, "n": int}; breakdowns are encoded in the metric name
("miou/fold=0", "pck@0.1/category=cat"). The caller adds run, model, representation, task, config
hash and params.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np
import torch

from imagekv.datasets.schema import Sample
from imagekv.grid import TokenGrid


class FeatureSource(Protocol):
    """What the probes read: `imagekv.features.FeatureStore(...).view(representation)` or any
    in-memory stand-in."""

    layers: tuple[int, ...]  # LM layer index of each leading entry of features()/text()

    def grid(self, image_id: str) -> TokenGrid: ...

    def features(self, image_id: str) -> torch.Tensor:
        """float32 [L, rows, cols, C]."""

    def text(self, text: str) -> torch.Tensor:
        """float32 [L, C]: the value of the text's last token per layer."""

    def excluded(self, image_id: str) -> np.ndarray | None:
        """bool [rows*cols]: tokens the probe ignores at every layer (SPEC E4.3): never a training
        token, cluster member or nearest-neighbour candidate, and predicted as background. None: none."""


ProbeFn = Callable[[Iterable[Sample], FeatureSource, dict], list[dict]]


def _registry() -> dict[str, tuple[ProbeFn, dict]]:
    from imagekv.probes import coseg, correspondence, fewshot_seg, temporal, text_query_seg

    return {
        "fewshot_seg": (fewshot_seg.run, fewshot_seg.DEFAULTS),
        "coseg": (coseg.run, coseg.DEFAULTS),
        "semantic_seg": (text_query_seg.run_semantic, text_query_seg.DEFAULTS),
        "referring_seg": (text_query_seg.run_referring, text_query_seg.DEFAULTS),
        "semantic_corr": (correspondence.run, correspondence.DEFAULTS),
        "temporal_corr": (temporal.run, temporal.DEFAULTS),
    }


def probe_defaults(task: str) -> dict:
    """Every hyperparameter of `task` with its default value."""
    return dict(_lookup(task)[1])


def resolve_params(task: str, params: dict) -> dict:
    """The task's defaults overridden by `params`; an unknown key is an error naming it."""
    defaults = _lookup(task)[1]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise KeyError(f"unknown parameter(s) {unknown} for probes.{task}; known: {sorted(defaults)}")
    return {**defaults, **params}


def run_probe(task: str, samples: Iterable[Sample], features: FeatureSource, params: dict) -> list[dict]:
    run, _ = _lookup(task)
    return run(samples, features, resolve_params(task, params))


def _lookup(task: str) -> tuple[ProbeFn, dict]:
    registry = _registry()
    if task not in registry:
        raise KeyError(f"unknown probe task {task!r}; known: {sorted(registry)}")
    return registry[task]


def metric_rows(layers: Iterable[int], metric: str, values: Iterable[float], n: int) -> list[dict]:
    """One tidy row per layer."""
    return [
        {"layer": int(layer), "metric": metric, "value": float(value), "n": int(n)}
        for layer, value in zip(layers, values, strict=True)
    ]
