"""The six probes: task key -> run function, and the one entry point `run_probe`.

Every run function takes the task's samples, a feature source with the representation already
bound, and the probe's hyperparameters, and returns tidy rows
{"layer": int, "metric": str, "value": float, "n": int}; breakdowns are encoded in the metric name
("miou/fold=0", "pck@0.1/category=cat"). The caller adds run, model, representation, task, config
hash and params.

A probe may also have a tuner: run on the held-out tuning split, it returns per-layer values of
hyperparameters (T3/T4: tau) that the scored run then uses and every row records in its params.
`run_probe` draws the splits (imagekv.probes.splits) and, for the held-out layer choice, also
reports each metric on the validation and the test split ("miou/split=test").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from imagekv.datasets.schema import Sample
from imagekv.probes.splits import DEFAULT_SEED, split_samples, unit_id

if TYPE_CHECKING:  # annotations only: figure and table jobs import this package without torch
    import torch

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
TuneFn = Callable[[Iterable[Sample], FeatureSource, dict], dict[str, list]]  # name -> value per layer
HELD_OUT_SPLITS = ("validation", "test")


def _registry() -> dict[str, tuple[ProbeFn, dict, TuneFn | None]]:
    from imagekv.probes import coseg, correspondence, fewshot_seg, temporal, text_query_seg

    return {
        "fewshot_seg": (fewshot_seg.run, fewshot_seg.DEFAULTS, None),
        "coseg": (coseg.run, coseg.DEFAULTS, None),
        "semantic_seg": (text_query_seg.run_semantic, text_query_seg.DEFAULTS, text_query_seg.tune_semantic),
        "referring_seg": (text_query_seg.run_referring, text_query_seg.DEFAULTS, text_query_seg.tune_referring),
        "semantic_corr": (correspondence.run, correspondence.DEFAULTS, None),
        "temporal_corr": (temporal.run, temporal.DEFAULTS, None),
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


def run_probe(
    task: str, samples: Iterable[Sample], features: FeatureSource, params: dict,
    split_seed: int = DEFAULT_SEED, held_out: bool = False,
) -> list[dict]:
    """Rows of every sample outside the tuning split (the task's `tune_images`, if any); with
    `held_out`, also each metric on the validation and on the test split. Rows of a tuned probe
    carry {"tuned": {name: value at the row's layer}}."""
    run, _, tune = _lookup(task)
    params = resolve_params(task, params)
    samples = list(samples)
    tuning = params.get("tune_images", 0) if tune else 0
    if not (tuning or held_out):
        return run(samples, features, params)
    parts, tuned = _tuned(task, samples, features, params, split_seed)
    params = params | tuned
    tuning_ids = {id(s) for s in parts["tune"]}
    rows = run([s for s in samples if id(s) not in tuning_ids], features, params)
    for split in HELD_OUT_SPLITS if held_out else ():
        if parts[split]:
            rows += [row | {"metric": f"{row['metric']}/split={split}"} for row in run(parts[split], features, params)]
    if tuned:
        index = {layer: i for i, layer in enumerate(features.layers)}
        rows = [row | {"tuned": {k: v[index[row["layer"]]] for k, v in tuned.items()}} for row in rows]
    return rows


def run_probe_units(
    task: str, samples: Iterable[Sample], features: FeatureSource, params: dict, split_seed: int = DEFAULT_SEED
) -> list[dict]:
    """The probe on each unit (imagekv.probes.splits.unit_id: an image's queries, an episode, a set,
    a pair, a clip) alone, outside the tuning split and with the tuned values: rows as `run_probe`'s
    plus "unit", what a paired bootstrap over units resamples."""
    run = _lookup(task)[0]
    params = resolve_params(task, params)
    parts, tuned = _tuned(task, list(samples), features, params, split_seed)
    units: dict[str, list] = {}
    for sample in parts["validation"] + parts["test"]:
        units.setdefault(unit_id(sample), []).append(sample)
    return [row | {"unit": unit} for unit, members in units.items() for row in run(members, features, params | tuned)]


def _tuned(task: str, samples: list, features: FeatureSource, params: dict, split_seed: int) -> tuple[dict, dict]:
    """The held-out splits of `samples` and the values the task's tuner chose on the tuning split."""
    tune = _lookup(task)[2]
    tuning = params.get("tune_images", 0) if tune else 0
    parts = split_samples(samples, split_seed, tuning)
    return parts, (tune(parts["tune"], features, params) if tuning else {})


def _lookup(task: str) -> tuple[ProbeFn, dict, TuneFn | None]:
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
