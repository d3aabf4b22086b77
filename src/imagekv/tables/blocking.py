"""R-T2: BLINK accuracy per subtask and overall with and without blocking the input-agnostic keys
(SPEC E4.4), with the random-position and all-image-keys controls: accuracy, the paired difference
from the unblocked model and its bootstrap 95 % interval."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.plan import BASELINE_CONDITION, SUBTASK_SUMMARIES
from imagekv.results import read_table
from imagekv.tables import write_table

CAPTION = "BLINK accuracy with attention to input-agnostic image keys blocked, and controls"


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    conditions = [c for c in sorted(frame["condition"].unique()) if c != BASELINE_CONDITION]
    records = []
    for (model, subtask), group in frame.groupby(["model", "subtask"]):
        by_condition = group.set_index("condition")
        base = by_condition.loc[BASELINE_CONDITION]
        record = {"model": MODEL_LABELS.get(model, model), "subtask": subtask, "n": int(base["n"]),
                  "unblocked": float(base["accuracy"])}
        for condition in conditions:
            row = by_condition.loc[condition]
            record[condition] = float(row["accuracy"])
            record[f"{condition} Δ"] = float(row["delta"])
            record[f"{condition} 95% CI"] = _interval(row["ci_low"], row["ci_high"])
        records.append(record)
    table = pd.DataFrame.from_records(records)
    table["order"] = table["subtask"].isin(SUBTASK_SUMMARIES).astype(int)
    return table.sort_values(["model", "order", "subtask"]).drop(columns="order").reset_index(drop=True)


def _interval(low: float, high: float) -> str:
    return "–" if pd.isna(low) else f"[{low:+.3f}, {high:+.3f}]"


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    frame = read_table(results)
    questions = frame[(frame["subtask"] == "overall") & (frame["condition"] == BASELINE_CONDITION)]
    provenance = Provenance(
        run=run, scale=scale, models=sorted(frame["model"].unique()), grid="native multi-image prompt",
        prefix="none", samples=", ".join(f"{MODEL_LABELS.get(m, m)} BLINK questions={n}"
                                         for m, n in zip(questions["model"], questions["n"])),
    )
    write_table(summarise(frame), stem, CAPTION, provenance)
