"""R-T3: the best layer of each image-value probe with each text prefix before the image, and its
gain over no prefix (SPEC E5)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagekv.figures.style import MODEL_LABELS, Provenance
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, headline, prefix_order
from imagekv.results import read_results
from imagekv.tables import write_table

CAPTION = "Image-value probes with a text prefix before the image: best layer and gain over no prefix"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    records = []
    for (model, task, prefix), curve in rows.groupby(["model", "task", "prefix"]):
        best = curve.loc[curve["value"].idxmax()]
        baseline = rows[(rows["model"] == model) & (rows["task"] == task) & (rows["prefix"] == "none")]
        last = curve.loc[curve["layer"].idxmax()]
        records.append({
            "model": MODEL_LABELS.get(model, model),
            "task": task,
            "metric": HEADLINE_METRICS[task],
            "prefix": prefix,
            "best_layer": f"{int(best['layer'])}/{int(last['layer']) + 1}",
            "best": float(best["value"]),
            "last": float(last["value"]),
            "gain_over_none": float(best["value"]) - float(baseline["value"].max()),
        })
    table = pd.DataFrame.from_records(records)
    table["task_order"] = table["task"].map(TASK_ORDER.index)
    table["prefix_order"] = table["prefix"].map(prefix_order(table["prefix"]).index)
    return table.sort_values(["task_order", "model", "prefix_order"]).drop(columns=["task_order", "prefix_order"])


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    rows = headline(read_results(results))
    prefixes = ", ".join(prefix_order(rows["prefix"]))
    write_table(summarise(rows).reset_index(drop=True), stem, CAPTION,
                Provenance.from_results(rows, run, scale, prefix=prefixes))
