"""The six probes: task key -> score and summarize functions, and the one entry point `run_probe`.

A probe's score function takes one sample, a feature source with the representation already bound,
and the probe's hyperparameters, and returns the sample's record (counts, hits, scores per layer);
its summarize function takes the records of any set of samples, the layers and the hyperparameters,
and returns tidy rows {"layer": int, "metric": str, "value": float, "n": int}. So a sample is scored
once however many splits and units report it. Breakdowns are encoded in the metric name
("miou/fold=0", "pck@0.1/category=cat"). The caller adds run, model, representation, task, config
hash and params.

A probe may also have a tuner: run on the held-out tuning split, it returns per-layer values of
hyperparameters (T3/T4: tau) that the scored run then uses and every row records in its params.
`run_probe` draws the splits (imagekv.probes.splits) and, for the held-out layer choice, also
reports each metric on the validation and the test split ("miou/split=test").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

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


ScoreFn = Callable[[Sample, FeatureSource, dict], Any]  # one sample's record
SummarizeFn = Callable[[Sequence[Any], Sequence[int], dict], list[dict]]  # records, layers, params -> rows
TuneFn = Callable[[Iterable[Sample], FeatureSource, dict], dict[str, list]]  # name -> value per layer
HELD_OUT_SPLITS = ("validation", "test")


class ProbeTask(NamedTuple):
    """What the probe runner needs of a task: score one sample, summarize the records into rows,
    the hyperparameters' defaults, and the tuner of the values chosen on a tuning split, if any."""

    score: ScoreFn
    summarize: SummarizeFn
    defaults: dict
    tune: TuneFn | None = None


def _registry() -> dict[str, ProbeTask]:
    from imagekv.probes import coseg, correspondence, fewshot_seg, temporal, text_query_seg as text

    return {
        "fewshot_seg": ProbeTask(fewshot_seg.score, fewshot_seg.summarize, fewshot_seg.DEFAULTS),
        "coseg": ProbeTask(coseg.score, coseg.summarize, coseg.DEFAULTS),
        "semantic_seg": ProbeTask(text.score, text.summarize_semantic, text.DEFAULTS, text.tune_semantic),
        "referring_seg": ProbeTask(text.score, text.summarize_referring, text.DEFAULTS, text.tune_referring),
        "semantic_corr": ProbeTask(correspondence.score, correspondence.summarize, correspondence.DEFAULTS),
        "temporal_corr": ProbeTask(temporal.clip_scores, temporal.summarize, temporal.DEFAULTS),
    }


def probe_defaults(task: str) -> dict:
    """Every hyperparameter of `task` with its default value."""
    return dict(_lookup(task).defaults)


def resolve_params(task: str, params: dict) -> dict:
    """The task's defaults overridden by `params`; an unknown key is an error naming it."""
    defaults = _lookup(task).defaults
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
    return _run(task, list(samples), features, params, split_seed, held_out)[0]


def run_probe_units(
    task: str, samples: Iterable[Sample], features: FeatureSource, params: dict, split_seed: int = DEFAULT_SEED
) -> tuple[list[dict], list[dict]]:
    """`run_probe`'s rows, and the probe on each unit (imagekv.probes.splits.unit_id: an image's
    queries, an episode, a set, a pair, a clip) alone, outside the tuning split and with the tuned
    values: rows as `run_probe`'s plus "unit", what a paired bootstrap over units resamples."""
    return _run(task, list(samples), features, params, split_seed, held_out=False, units=True)


def _run(
    task: str, samples: list, features: FeatureSource, params: dict, split_seed: int, held_out: bool,
    units: bool = False,
) -> tuple[list[dict], list[dict]]:
    """The rows of `run_probe` and, with `units`, of `run_probe_units`: each sample scored once, its
    record summarized in every split and unit that holds it."""
    probe = _lookup(task)
    score, summarize = probe.score, probe.summarize
    params = resolve_params(task, params)
    tuning = params.get("tune_images", 0) if probe.tune else 0
    if not (tuning or held_out or units):
        return summarize([score(sample, features, params) for sample in samples], features.layers, params), []
    parts, tuned = _tuned(task, samples, features, params, split_seed)
    params = params | tuned
    tuning_ids = {id(s) for s in parts["tune"]}
    scored = [(s, score(s, features, params)) for s in samples if id(s) not in tuning_ids]
    records = {id(s): record for s, record in scored}
    rows = summarize([record for _, record in scored], features.layers, params)
    for split in HELD_OUT_SPLITS if held_out else ():
        if parts[split]:
            split_rows = summarize([records[id(s)] for s in parts[split]], features.layers, params)
            rows += [row | {"metric": f"{row['metric']}/split={split}"} for row in split_rows]
    if tuned:
        index = {layer: i for i, layer in enumerate(features.layers)}
        rows = [row | {"tuned": {k: v[index[row["layer"]]] for k, v in tuned.items()}} for row in rows]
    per_unit: dict[str, list] = {}
    for sample in parts["validation"] + parts["test"] if units else ():
        per_unit.setdefault(unit_id(sample), []).append(records[id(sample)])
    unit_rows = [row | {"unit": unit} for unit, unit_records in per_unit.items()
                 for row in summarize(unit_records, features.layers, params)]
    return rows, unit_rows


def _tuned(task: str, samples: list, features: FeatureSource, params: dict, split_seed: int) -> tuple[dict, dict]:
    """The held-out splits of `samples` and the values the task's tuner chose on the tuning split."""
    tune = _lookup(task).tune
    tuning = params.get("tune_images", 0) if tune else 0
    parts = split_samples(samples, split_seed, tuning)
    return parts, (tune(parts["tune"], features, params) if tuning else {})


def _lookup(task: str) -> ProbeTask:
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
