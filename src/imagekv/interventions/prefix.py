"""E5: the image-value probes with a text prefix before the image (SPEC E5), and their gains.

One job per MLM runs every condition of every chosen task on the stores plan.prefix_probes_spec
names. A condition is labelled by its prefix (`none`, a fixed string such as `task` or `neutral`, or
a per-item template such as `find`, imagekv.prefixes); in the text-query tasks (T3, T4) the query's
value is held fixed, the no-prefix store's text-only value, so a gain is a change of the image
values alone. The label `in_context:<prefix>` is SPEC E5's in-context variant: the query read after
the image in the same sequence, its baseline `in_context:none`.

Besides the tidy rows, the job writes the headline metric per unit (an image's queries, an episode,
a set, a pair, a clip) and layer, from which `prefix_gains` computes each condition's gain over its
baseline with a paired bootstrap over units.

(Figures and tables import the label helpers; the probe code is imported where it runs.)

Layer 0 cannot change: a layer-0 value is v_proj of the normalised input embedding of its own token,
which no earlier token enters, so every prefix's layer-0 value equals the baseline's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from imagekv.probes.headline import HEADLINE_METRICS
from imagekv.results import COLUMNS, read_table, stamp, tidy_rows, write_table_rows

BASELINE = "none"
IN_CONTEXT = "in_context:"  # label prefix of the in-context query variant
UNIT_COLUMNS = ["model", "task", "prefix", "unit", "layer", "value"]
GAIN_SORT = ["model", "task", "prefix"]
GAIN_COLUMNS = ["model", "task", "prefix", "baseline", "metric", "units", "best_layer", "best", "baseline_best",
                "gain", "low", "high", "resamples"]


def in_context_label(prefix: str) -> str:
    return f"{IN_CONTEXT}{prefix}"


def baseline_of(label: str) -> str:
    """The condition a label's gain is measured against."""
    return in_context_label(BASELINE) if label.startswith(IN_CONTEXT) else BASELINE


def condition_order(labels: Iterable[str]) -> list[str]:
    """The fixed-query conditions first, each group with its baseline first, then by name."""
    return sorted(set(labels), key=lambda label: (label.startswith(IN_CONTEXT), label != baseline_of(label), label))


def source_of(condition: dict):
    """The feature source a condition's probe reads: its store's values, with the text queries of
    `condition["queries"]` (the no-prefix store) when given."""
    from imagekv.features import FeatureStore, FixedQueries

    view = FeatureStore(condition["features"]).view("values")
    if condition["queries"]:
        return FixedQueries(view, FeatureStore(condition["queries"]).view("values"))
    return view


def prefix_probes(spec: dict, output: Path, units_output: Path) -> None:
    """Every condition of every task in `spec["tasks"]`: the tidy rows, and the headline metric per
    unit and layer."""
    from imagekv.datasets import load_dataset
    from imagekv.features import FeatureStore
    from imagekv.prefixes import item_samples
    from imagekv.probes import run_probe_units

    frames, units = [], []
    for task, task_spec in sorted(spec["tasks"].items()):
        dataset = load_dataset(task_spec["dataset"], Path(task_spec["dataset_root"]), task_spec["dataset_cfg"])
        for condition in task_spec["conditions"]:
            samples = list(dataset.samples())
            if condition["per_item"]:
                samples = item_samples(samples, condition["in_context"])
            source = source_of(condition)
            probe_spec = task_spec["probe"] | {"prefix": condition["label"], "condition": condition}
            rows, per_unit = run_probe_units(task, samples, source, task_spec["probe"]["params"],
                                             split_seed=task_spec["probe"]["split_seed"])
            grid = FeatureStore(condition["features"]).grid_label()
            frames.append(tidy_rows(probe_spec, rows, grid=grid))
            units += [{"model": spec["model"], "task": task, "prefix": condition["label"], "unit": row["unit"],
                       "layer": row["layer"], "value": row["value"]}
                      for row in per_unit if row["metric"] == HEADLINE_METRICS[task]]
    write_table_rows(pd.concat(frames, ignore_index=True)[COLUMNS], output, COLUMNS[:8])
    write_table_rows(pd.DataFrame(units, columns=UNIT_COLUMNS), units_output, UNIT_COLUMNS[:5])


def best_gain_bootstrap(base: np.ndarray, new: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> dict:
    """Gain of the best layer's mean over units, new minus base, both [units, layers] over the same
    units; percentile interval from resampling units (paired), the best layers chosen again in each
    resample, so the interval includes the choice of layer."""
    if base.shape != new.shape or base.ndim != 2 or not base.size:
        raise ValueError(f"paired bootstrap needs two equal [units, layers] arrays, got {base.shape} and {new.shape}")
    rng = np.random.default_rng(seed)
    gains = []
    for done in range(0, resamples, 100):
        index = rng.integers(0, len(base), size=(min(100, resamples - done), len(base)))
        gains.append(new[index].mean(1).max(1) - base[index].mean(1).max(1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(gains), [tail, 100 - tail])
    return {"gain": float(new.mean(0).max() - base.mean(0).max()), "low": float(low), "high": float(high)}


def prefix_gains(spec: dict, inputs: Iterable[str | Path], output: Path) -> None:
    """Per MLM, task and condition: the best layer's mean headline metric over units, the gain over
    the condition's baseline and its paired-bootstrap interval."""
    units = pd.concat([read_table(path) for path in inputs], ignore_index=True)
    units["unit"] = units["unit"].astype(str)
    records = []
    for (model, task), frame in units.groupby(["model", "task"]):
        table = frame.pivot_table(index=["prefix", "unit"], columns="layer", values="value")
        for label in condition_order(frame["prefix"]):
            base_label = baseline_of(label)
            if label == base_label or base_label not in table.index.get_level_values(0):
                continue
            new, base = table.loc[label], table.loc[base_label]
            shared = new.index.intersection(base.index)
            if len(shared) != len(new) or len(shared) != len(base):
                raise ValueError(f"{model} {task}: conditions {label!r} and {base_label!r} scored different units")
            new, base = new.loc[shared].to_numpy(), base.loc[shared].to_numpy()
            result = best_gain_bootstrap(base, new, spec["resamples"], spec["seed"])
            records.append({"model": model, "task": task, "prefix": label, "baseline": base_label,
                            "metric": HEADLINE_METRICS[task], "units": len(shared),
                            "best_layer": int(table.columns[new.mean(0).argmax()]),
                            "best": float(new.mean(0).max()), "baseline_best": float(base.mean(0).max()),
                            **result, "resamples": spec["resamples"]})
    frame = stamp(pd.DataFrame.from_records(records, columns=GAIN_COLUMNS), spec)
    write_table_rows(frame, output, GAIN_SORT)
