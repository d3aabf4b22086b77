"""E2 as a workflow job: each MLM's input-projection and best-layer probe scores beside its BLINK
perception score, and their correlations, written as one JSON record."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from imagekv.config import spec_hash
from imagekv.interventions.correlation import projection_correlation
from imagekv.io import write_json
from imagekv.probes.headline import headline_rows
from imagekv.results import read_results, read_table


def correlation(spec: dict, probes: Sequence[Path], accuracy: Path, output: Path) -> None:
    rows = headline_rows(pd.concat([read_results(path) for path in probes], ignore_index=True))
    rows = rows[rows["model"].isin(spec["models"]) & rows["task"].isin(spec["tasks"])]
    projection_rows = rows[rows["representation"] == "projection"]
    tasks = sorted(t for t, group in projection_rows.groupby("task") if set(group["model"]) == set(spec["models"]))
    if not tasks:
        raise ValueError(f"{[str(path) for path in probes]}: no task of {spec['tasks']} has input-projection "
                         f"probe rows for every model {spec['models']}")
    projection = {m: {t: _value(projection_rows, m, t, "max") for t in tasks} for m in spec["models"]}
    value_rows = rows[rows["representation"] == "values"]
    best_layer = {m: {t: _value(value_rows, m, t, "max") for t in tasks} for m in spec["models"]}
    scores = read_table(accuracy)
    scores = scores[(scores["condition"] == spec["condition"]) & (scores["subtask"] == spec["subtask"])]
    perception = {m: float(scores.loc[scores["model"] == m, "accuracy"].iloc[0]) for m in spec["models"]
                  if (scores["model"] == m).any()}
    missing = sorted(set(spec["models"]) - set(perception))
    if missing:
        raise ValueError(f"{accuracy}: no {spec['subtask']} accuracy ({spec['condition']}) for {missing}")
    write_json(output, {
        "spec": spec, "config_hash": spec_hash(spec), "tasks": tasks, "projection": projection,
        "best_layer": best_layer, "perception": perception,
        **projection_correlation(projection, best_layer, perception),
    })


def _value(rows: pd.DataFrame, model: str, task: str, how: str) -> float:
    values = rows[(rows["model"] == model) & (rows["task"] == task)]["value"]
    if values.empty:
        raise ValueError(f"no {task} probe rows for {model}")
    return float(values.agg(how))
