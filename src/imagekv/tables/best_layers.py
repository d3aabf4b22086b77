"""R-T1: per model and task, the best LM layer against the projector input, the model's own vision
tower and reference encoders, and calibration.

E1/E2/E3 summaries in one table: the best layer (index/depth and normalised depth) and its score,
the score at the last layer, the gain of the best layer over the projector output (the "LM augments
its input" claim), the model's own fine-tuned tower (what its projector receives) and its own
encoder before MLM training (SigLIP for LLaVA-OneVision, CLIP ViT-L/14-336 for LLaVA-NeXT; none
public for Qwen2.5-VL, as the footer says), each minus the best layer (> 0 where the encoder wins:
the "MLM finetuning costs information" claim, measured per model against its own encoder), and the
oracle and noise references. Without a pairing every reference is each model's encoder.

`best` picks the layer on the very data it scores (biased upward). The held-out columns pick it on
the validation split and score it on the disjoint test split (imagekv.probes.splits):
`heldout_test` (honest) beside `oracle_test` (the best test-split layer), and the honest gain over
the projector output on the same test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from imagekv import pairing as pairs
from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, headline_rows
from imagekv.results import read_results
from imagekv.tables import write_table

CAPTION = ("Best LM layer of the image-value probes against the projector input, the model's own vision tower "
           "and its own encoder before MLM training")


def held_out_choice(validation: pd.Series, test: pd.Series) -> tuple[float, float, float]:
    """(layer, honest, oracle) from per-layer scores indexed by layer: the layer best on
    `validation` (the first among equals), its `test` score, and the best `test` score."""
    if validation.empty or test.empty:
        return np.nan, np.nan, np.nan
    layer = validation.idxmax()
    return layer, float(test.get(layer, np.nan)), float(test.max())


def split_rows(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """The headline metric of each task on one held-out split ("validation", "test")."""
    wanted = frame["task"].map(HEADLINE_METRICS) + f"/split={split}"
    return frame[(frame["metric"] == wanted) & (frame["prefix"] == "none")]


def summarise(frame: pd.DataFrame, pairing: dict | None = None) -> pd.DataFrame:
    rows = headline_rows(frame)
    splits = {split: split_rows(frame, split) for split in ("validation", "test")}
    available = pairs.references_in(rows)
    references = {
        rep: rows[rows["representation"] == rep].groupby("task")["value"].max()
        for rep in (*available, *pairs.CALIBRATION)
    }
    records = []
    for (model, task), curve in rows[rows["representation"] == "values"].groupby(["model", "task"]):
        best = curve.loc[curve["value"].idxmax()]
        last = curve.loc[curve["layer"].idxmax()]
        projection = rows[(rows["model"] == model) & (rows["task"] == task) & (rows["representation"] == "projection")]["value"]
        proj = float(projection.iloc[0]) if len(projection) else float("nan")
        reference = {rep: float(values.get(task, float("nan"))) for rep, values in references.items()}
        own = pairs.own_references(model, pairing, available)
        encoder = max((reference[name] for name in own), default=float("nan"))
        tower = _curve(rows, model, task, pairs.TOWER)
        tower_score = float(tower.iloc[0]) if len(tower) else float("nan")
        curves = {split: _curve(part, model, task, "values") for split, part in splits.items()}
        layer, honest, oracle_test = held_out_choice(curves["validation"], curves["test"])
        projection_test = _curve(splits["test"], model, task, "projection")
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
            "heldout_layer": "–" if np.isnan(layer) else f"{int(layer)}/{int(last['layer']) + 1}",
            "heldout_test": honest,
            "oracle_test": oracle_test,
            "heldout_gain_over_projection": honest - float(projection_test.max()) if len(projection_test) else np.nan,
            "tower": tower_score,
            "tower_minus_best": tower_score - float(best["value"]),
            "encoder": _encoder_label(own, model, pairing),
            "encoder_score": encoder,
            "encoder_minus_best": encoder - float(best["value"]),
            "oracle": reference["oracle"],
            "noise": reference["noise"],
        })
    table = pd.DataFrame.from_records(records)
    table["task"] = pd.Categorical(table["task"], categories=TASK_ORDER, ordered=True)
    return table.sort_values(["task", "model"]).reset_index(drop=True).astype({"task": str})


def _encoder_label(own: list[str], model: str, pairing: dict | None) -> str:
    if own:
        return ", ".join(MODEL_LABELS.get(name, name) for name in own)
    return "none public" if pairing and model in pairing else "–"


def _curve(rows: pd.DataFrame, model: str, task: str, representation: str) -> pd.Series:
    """Score per layer of one (model, task, representation)."""
    match = rows[(rows["model"] == model) & (rows["task"] == task) & (rows["representation"] == representation)]
    return match.set_index("layer")["value"].sort_index()


def write(results: str | Path, stem: str | Path, run: str, scale: str, pairing: str | dict | None = None) -> None:
    pairing = pairs.parse(pairing)
    frame = read_results(results)
    provenance = Provenance.from_results(headline_rows(frame), run, scale, pairing=pairing)
    write_table(summarise(frame, pairing), stem, CAPTION, provenance)
