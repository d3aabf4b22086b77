"""R-T1: per model and task, the best LM layer against the projector input, SigLIP and calibration.

E1/E2/E3 summaries in one table: the best layer (index/depth and normalised depth) and its score,
the score at the last layer, the gain of the best layer over the projector output (the "LM augments
its input" claim), SigLIP minus the best layer (the "MLM finetuning costs information" claim: > 0
where SigLIP wins), and the oracle and noise references. This is the SPEC's SigLIP comparison
(R-T1) for every model, not only LLaVA-OneVision.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagekv.figures.style import MODEL_LABELS, Provenance
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, headline_rows
from imagekv.results import read_results
from imagekv.tables import write_table

CAPTION = "Best LM layer of the image-value probes against the projector input and reference encoders"


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    rows = headline_rows(frame)
    references = {
        rep: rows[rows["representation"] == rep].groupby("task")["value"].max()
        for rep in ("siglip", "oracle", "noise")
    }
    records = []
    for (model, task), curve in rows[rows["representation"] == "values"].groupby(["model", "task"]):
        best = curve.loc[curve["value"].idxmax()]
        last = curve.loc[curve["layer"].idxmax()]
        projection = rows[(rows["model"] == model) & (rows["task"] == task) & (rows["representation"] == "projection")]["value"]
        proj = float(projection.iloc[0]) if len(projection) else float("nan")
        reference = {rep: float(values.get(task, float("nan"))) for rep, values in references.items()}
        records.append({
            "model": MODEL_LABELS.get(model, model),
            "task": task,
            "metric": HEADLINE_METRICS[task],
            "best_layer": f"{int(best['layer'])}/{int(last['layer']) + 1}",
            "best_depth": int(best["layer"]) / max(int(last["layer"]), 1),
            "best": float(best["value"]),
            "last": float(last["value"]),
            "projection": proj,
            "gain_over_projection": float(best["value"]) - proj,
            "siglip": reference["siglip"],
            "siglip_minus_best": reference["siglip"] - float(best["value"]),
            "oracle": reference["oracle"],
            "noise": reference["noise"],
        })
    table = pd.DataFrame.from_records(records)
    table["task"] = pd.Categorical(table["task"], categories=TASK_ORDER, ordered=True)
    return table.sort_values(["task", "model"]).reset_index(drop=True).astype({"task": str})


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    frame = read_results(results)
    write_table(summarise(frame), stem, CAPTION, Provenance.from_results(headline_rows(frame), run, scale))
