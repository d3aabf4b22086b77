"""R-T4: BLINK questions whose answer is present in the image values but not surfaced (SPEC E6):
per read-out subtask, the MLM's accuracy, the value read-out's accuracy and the fraction of
questions the read-out answers right while the MLM answers wrong, at the layer chosen on the other
half of the questions (honest) and at the best layer (oracle)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.results import read_table
from imagekv.tables import write_table

CAPTION = "BLINK: perception present in the image values but not surfaced in the answer"


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    records = []
    for (model, subtask, readout), group in frame.groupby(["model", "subtask", "readout"]):
        chosen = group.set_index("selection")
        honest, oracle = chosen.loc["honest"], chosen.loc["oracle"]
        records.append({
            "model": MODEL_LABELS.get(model, model),
            "subtask": subtask,
            "readout": readout,
            "n": int(honest["n"]),
            "mlm_accuracy": float(honest["model_accuracy"]),
            "readout_honest": float(honest["readout_accuracy"]),
            "not_surfaced_honest": float(honest["not_surfaced"]),
            "layers_honest": str(honest["layer"]),
            "readout_oracle": float(oracle["readout_accuracy"]),
            "not_surfaced_oracle": float(oracle["not_surfaced"]),
            "layer_oracle": str(oracle["layer"]),
            "primary": "honest" if bool(honest["primary"]) else "oracle",
            "markers_missing": int(honest.get("markers_missing", 0)),  # correspondence questions read as wrong
        })
    return pd.DataFrame.from_records(records)


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    frame = read_table(results)
    counts = frame[frame["selection"] == "honest"].groupby("subtask")["n"].max()
    provenance = Provenance(
        run=run, scale=scale, models=sorted(frame["model"].unique()), grid="value tokens of the fixed grid",
        prefix="none", samples=", ".join(f"{s}={n}" for s, n in counts.items()),
    )
    write_table(summarise(frame), stem, CAPTION, provenance)
