"""The controls table (issue 18): per planted effect, what was planted, what the experiment
recovered, its 95 % interval where it has one, and whether the control passes
(imagekv.interventions.controls)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.results import read_table
from imagekv.tables import write_table

CAPTION = "Positive controls: effects planted in the twins, and what each experiment recovers"


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    interval = [
        "–" if pd.isna(low) else f"[{low:+.3f}, {high:+.3f}]" for low, high in zip(frame["ci_low"], frame["ci_high"])
    ]
    return pd.DataFrame({
        "experiment": frame["experiment"], "model": frame["model"].map(lambda m: MODEL_LABELS.get(m, m)),
        "control": frame["control"], "planted": frame["planted"].astype(str), "recovered": frame["recovered"],
        "interval": interval, "pass": frame["pass"].map({True: "pass", False: "FAIL"}),
    }).reset_index(drop=True)


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    frame = read_table(results)
    write_table(summarise(frame), stem, CAPTION, Provenance.from_controls(frame, run, scale))
