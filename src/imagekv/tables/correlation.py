"""E2 (R-F4's numbers): per MLM the input-projection probe quality (x1, min-max normalised across the
models and averaged over tasks), the best layer's gain over it (x2) and the BLINK accuracy (y); then
Pearson r and Spearman rho of each reading, descriptive only with so few models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from imagekv.io import read_json
from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.tables import write_table

CAPTION = "Input-projection probe quality against BLINK accuracy (correlations descriptive)"
READINGS = ("projection_quality", "lm_gain")


def summarise(result: dict) -> pd.DataFrame:
    records = [
        {"row": MODEL_LABELS.get(model, model),
         **{reading: result[reading]["normalised"]["score"][model] for reading in READINGS},
         "blink_accuracy": result["perception"][model]}
        for model in result["spec"]["models"]
    ]
    for statistic in ("pearson", "spearman"):
        n = result[READINGS[0]]["n"]
        label = f"{statistic} (n={n}, descriptive)" if result[READINGS[0]]["descriptive"] else f"{statistic} (n={n})"
        records.append({"row": label, **{r: _number(result[r][statistic]) for r in READINGS}, "blink_accuracy": np.nan})
    return pd.DataFrame.from_records(records)


def _number(value: float | None) -> float:
    return np.nan if value is None else float(value)


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    result = read_json(results)
    write_table(summarise(result), stem, CAPTION, Provenance.from_correlation(result, run, scale))
