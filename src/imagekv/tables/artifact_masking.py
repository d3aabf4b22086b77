"""E4.3 artifacts in the values: each task's headline score at the masked late layers with nothing
excluded, with the flagged input-agnostic positions excluded, and with as many random positions
excluded, averaged over those layers, and the changes from no exclusion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.plan import BASELINE_CONDITION as BASELINE
from imagekv.plan import MASKING_CONDITIONS as CONDITIONS
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, headline
from imagekv.results import read_results
from imagekv.tables import write_table

CAPTION = "Value probes at late layers with the input-agnostic tokens excluded, against random tokens excluded"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    records = []
    for (model, task), group in rows.groupby(["model", "task"]):
        means = group.groupby("condition")["value"].mean()
        layers = sorted(group["layer"].unique())
        record = {"model": MODEL_LABELS.get(model, model), "task": task, "metric": HEADLINE_METRICS[task],
                  "layers": _span(layers),
                  "excluded per layer": float(group[group["condition"] == "flagged"]["excluded"].mean())}
        record |= {condition: float(means[condition]) for condition in _ordered(means.index)}
        record |= {f"{c} − {BASELINE}": float(means[c] - means[BASELINE]) for c in _ordered(means.index) if c != BASELINE}
        records.append(record)
    table = pd.DataFrame.from_records(records)
    table["order"] = table["task"].map(TASK_ORDER.index)
    return table.sort_values(["order", "model"]).drop(columns="order").reset_index(drop=True)


def _ordered(conditions) -> list[str]:
    return [c for c in CONDITIONS if c in set(conditions)]


def _span(layers: list[int]) -> str:
    """"20-27" for a run of layers, else the list."""
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    rows = headline(read_results(results))
    if rows.empty:
        raise ValueError(f"{results}: no model has flagged positions in the masked layers, so nothing was masked "
                         "(see interventions.key_variance.tau and interventions.masked_probes.layers)")
    if BASELINE not in set(rows["condition"]):
        raise ValueError(f"{results}: no rows of the {BASELINE!r} condition to compare the masked probes with")
    masked = ", ".join(f"{MODEL_LABELS.get(m, m)} {_span(sorted(g['layer'].unique()))}" for m, g in rows.groupby("model"))
    provenance = dataclasses.replace(Provenance.from_results(rows, run, scale), layers=f"masked {masked}")
    write_table(summarise(rows), stem, CAPTION, provenance)
