"""The positive controls (issue 18): what the experiments recover from the planted twins
(imagekv.models.planted), beside what was planted, with a pass/fail per control.

E4 detection: the flagged (layer, grid position) pairs of each model's key_variance.json against the
planted ones (precision and recall, both must be 1) and its ell0 against the planted first layer.
E4 blocking: the paired accuracy difference of blocking the flagged keys (the plant makes it
2a - 1 > 0, a = the accuracy of the perceived answer: its interval must exclude 0) and of blocking as
many random image positions (the plant leaves the answer unchanged: its interval must contain 0).
Probes: per task of plan.CONTROL_PROBE_TASKS, the layer of each informed model's best value probe
against the planted INFO_LAYER (must be equal), and the null model's best score against the noise
backbone's: it passes within half the distance from that noise bound to the weakest informed
model's best score, i.e. when it lies nearer the noise bound than the probe's planted signal.
E6 not surfaced: the Art_Style mean read-out at the planted layer answers every question right, so
the not-surfaced rate there is the share of questions the model answers wrong (1 - its accuracy,
the planted rate); the rate's 95 % Wilson interval over the questions must contain it.
E5 prefix: on T3 and T4, the gain of the prefix naming the queried object ("Find: {text}.") over no
prefix, whose paired-bootstrap interval must lie above 0 (by more than the stores' rounding), and of
the neutral prefix, which names no object, whose interval must contain 0.
E2 correlation: across the planted twins, the Pearson and Spearman correlations of the input
projection's probe quality with the perception score (correlation.json); the plant orders both by
PROJECTION_QUALITY, so both must be > 0. Three points give no interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from imagekv.io import read_json
from imagekv.labels import ACROSS_MODELS
from imagekv.models.planted import (
    INFO_LAYER,
    NOT_SURFACED_LAYER,
    NULL_MODEL,
    PLANTED_FROM,
    PLANTED_OFFSETS,
    planted_layers,
)
from imagekv.probes.headline import headline_rows
from imagekv.results import read_results, read_table, stamp, write_table_rows

CONTROL_SORT = ("experiment", "model", "control")


def planted_flags() -> set[tuple[int, int]]:
    """The (layer, grid position) pairs whose keys the plant makes input-agnostic."""
    return {(layer, position) for layer in planted_layers() for position in PLANTED_OFFSETS}


def detection_rows(model: str, flags: Mapping) -> list[dict]:
    """Precision and recall of the detector's flags against the planted pairs, and its ell0."""
    found = {(layer, position) for layer, positions in zip(flags["layers"], flags["flagged_positions"])
             for position in positions}
    planted = planted_flags()
    hits = len(found & planted)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(planted)
    ell0 = flags["ell0"]
    return [
        _row("E4 detection", model, "precision", 1.0, precision, passed=precision == 1.0),
        _row("E4 detection", model, "recall", 1.0, recall, passed=recall == 1.0),
        _row("E4 detection", model, "ell0", PLANTED_FROM, float("nan") if ell0 is None else ell0,
             passed=ell0 == PLANTED_FROM),
    ]


def blocking_rows(accuracy: pd.DataFrame) -> list[dict]:
    """Per model, the overall accuracy change of blocking the flagged keys (interval above 0) and
    of the random control (interval around 0)."""
    rows = []
    overall = accuracy[accuracy["subtask"] == "overall"]
    for model, frame in overall.groupby("model"):
        by_condition = frame.set_index("condition")
        for condition, planted, passes in (("flagged", "> 0", _above_zero), ("random", "0", _around_zero)):
            if condition not in by_condition.index:
                raise ValueError(f"the BLINK accuracy of {model} holds no {condition!r} condition; the controls "
                                 "need interventions.blocking.conditions to include it")
            row = by_condition.loc[condition]
            low, high = float(row["ci_low"]), float(row["ci_high"])
            rows.append(_row("E4 blocking", model, f"{condition} Δ accuracy", planted, float(row["delta"]),
                             passed=passes(low, high), low=low, high=high))
    return rows


def probe_rows(results: pd.DataFrame) -> list[dict]:
    """Per probed task, each informed model's best value-probe layer against INFO_LAYER, and the
    null model's best score against the noise bound (see the module docstring for its tolerance)."""
    rows = []
    headline = headline_rows(results)
    values = headline[headline["representation"] == "values"]
    noise = headline[headline["representation"] == "noise"]
    for task, frame in values.groupby("task"):
        bound = noise.loc[noise["task"] == task, "value"]
        if bound.empty:
            raise ValueError(f"the controls' probe results hold no noise-backbone row for {task}")
        curves = {model: curve.set_index("layer")["value"] for model, curve in frame.groupby("model")}
        informed = {model: curve for model, curve in curves.items() if model != NULL_MODEL}
        if NULL_MODEL not in curves or not informed:
            raise ValueError(f"the controls' {task} probe results need {NULL_MODEL} and an informed model, "
                             f"got {sorted(curves)}")
        for model, curve in informed.items():
            best = int(curve.idxmax())
            rows.append(_row("Probes", model, f"best layer: {task}", INFO_LAYER, best, passed=best == INFO_LAYER))
        noise_bound = float(bound.iloc[0])
        tolerance = (min(curve.max() for curve in informed.values()) - noise_bound) / 2
        null = float(curves[NULL_MODEL].max())
        low, high = noise_bound - tolerance, noise_bound + tolerance
        rows.append(_row("Probes", NULL_MODEL, f"null score: {task}", f"{noise_bound:.3f}", null,
                         passed=tolerance > 0 and low <= null <= high, low=low, high=high))
    return rows


NOT_SURFACED_SUBTASK, NOT_SURFACED_READOUT = "Art_Style", "mean"  # the read-out the E6 plant makes right
WILSON_Z = 1.959964  # the normal 97.5 % quantile: a 95 % interval


def not_surfaced_rows(frame: pd.DataFrame, layer: int = NOT_SURFACED_LAYER) -> list[dict]:
    """Per model, the not-surfaced rate of the planted read-out at `layer` (the planted one unless a
    test moves it) against the planted rate, 1 - the model's accuracy on the same questions."""
    rows = []
    chosen = frame[(frame["subtask"] == NOT_SURFACED_SUBTASK) & (frame["readout"] == NOT_SURFACED_READOUT)
                   & (frame["selection"] == "layer") & (frame["layer"].astype(str) == str(layer))]
    for model, row in chosen.set_index("model").iterrows():
        planted, rate, n = 1 - float(row["model_accuracy"]), float(row["not_surfaced"]), int(row["n"])
        low, high = wilson_interval(rate, n)
        rows.append(_row("E6 not-surfaced", model, f"{NOT_SURFACED_SUBTASK} rate, layer {layer}", round(planted, 6),
                         rate, passed=low <= planted <= high, low=low, high=high))
    missing = sorted(set(frame["model"]) - {row["model"] for row in rows})
    if missing:
        raise ValueError(f"not_surfaced.csv holds no {NOT_SURFACED_SUBTASK} {NOT_SURFACED_READOUT} read-out at layer "
                         f"{layer} for {missing}; the controls need interventions.not_surfaced.readouts to include it")
    return rows


# E5: the prefix whose gain the plant makes > 0 (config `prefixes.find`, SPEC E5 (i): it names the
# queried object) and the neutral one of matched length (E5 (ii): it names none), on T3 and T4.
TASK_PREFIX, NEUTRAL_PREFIX = "find", "neutral"
PREFIX_CONTROL_TASKS = ("semantic_seg", "referring_seg")
# Besides the twin's own change in INFO_LAYER, the neutral prefix rescales the noise of the other
# layers' image values (imagekv.models.planted: its spread is the replaced values'), which the float16
# stores round: pixels of a score map near tau can flip, moving the mIoU by ~1e-5 either way. An
# interval within NEUTRAL_TOLERANCE of 0 counts as containing it, and the task prefix's gain must
# clear it (a plant switched off leaves a gain of that rounding, ~1e-6, of either sign).
NEUTRAL_TOLERANCE = 1e-3


def prefix_rows(gains: pd.DataFrame) -> list[dict]:
    """Per model and T3/T4 task, the prefix_gains.csv gain over no prefix of the task prefix
    (interval above 0) and of the neutral one (interval around 0)."""
    rows = []
    for model, frame in gains.groupby("model"):
        by_condition = frame.set_index(["task", "prefix"])
        for task in PREFIX_CONTROL_TASKS:
            for prefix, planted, passes in ((TASK_PREFIX, "> 0", _above_rounding), (NEUTRAL_PREFIX, "0", _near_zero)):
                if (task, prefix) not in by_condition.index:
                    raise ValueError(f"prefix_gains.csv holds no {prefix!r} gain on {task} for {model}; the controls "
                                     "need interventions.prefix to run it (config/controls.yaml)")
                row = by_condition.loc[(task, prefix)]
                low, high = float(row["low"]), float(row["high"])
                rows.append(_row("E5 prefix", model, f"{prefix} gain: {task}", planted, float(row["gain"]),
                                 passed=passes(low, high), low=low, high=high))
    return rows


CORRELATIONS = {"pearson": "Pearson r", "spearman": "Spearman rho"}


def correlation_rows(record: Mapping) -> list[dict]:
    """E2's correlation.json: each correlation of projection quality with the perception score
    (the accuracy of the record's condition) against the planted sign; undefined counts as failing."""
    reading = record["projection_quality"]
    condition = record["spec"]["condition"]
    rows = []
    for statistic, label in CORRELATIONS.items():
        value = reading[statistic]
        control = f"{label} (n = {reading['n']}): projection vs {condition} acc."
        rows.append(_row("E2 correlation", ACROSS_MODELS, control, "> 0", float("nan") if value is None else value,
                         passed=value is not None and value > 0))
    return rows


def wilson_interval(rate: float, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion `rate` observed on `n` trials (Wilson 1927, JASA 22:209)."""
    centre = (rate + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(rate * (1 - rate) / n + z**2 / (4 * n**2))
    # rounded: at rate 0 or 1 the bound is exactly 0 or 1, which floating point misses by an ulp
    return max(0.0, round(float(centre - half), 12)), min(1.0, round(float(centre + half), 12))


def _above_zero(low: float, high: float) -> bool:
    return low > 0


def _above_rounding(low: float, high: float) -> bool:
    return low > NEUTRAL_TOLERANCE


def _around_zero(low: float, high: float) -> bool:
    return low <= 0 <= high


def _near_zero(low: float, high: float) -> bool:
    return low <= NEUTRAL_TOLERANCE and -NEUTRAL_TOLERANCE <= high


def _row(experiment: str, model: str, control: str, planted, recovered: float, *, passed: bool,
         low: float = float("nan"), high: float = float("nan")) -> dict:
    return {"experiment": experiment, "model": model, "control": control, "planted": str(planted),
            "recovered": float(recovered), "ci_low": low, "ci_high": high, "pass": bool(passed)}


def controls(spec: dict, flags_paths: Sequence[Path], accuracy_path: Path, output: Path,
             probe_paths: Sequence[Path], not_surfaced_path: Path, prefix_gains_path: Path,
             correlation_path: Path) -> None:
    """Every control's row, from the models' key_variance.json, the collected BLINK accuracy,
    the probe results of the controls' tasks (the MLMs' values, the noise backbone), E6's
    not_surfaced.csv, E5's prefix_gains.csv and E2's correlation.json."""
    rows = []
    rows += probe_rows(pd.concat([read_results(path) for path in probe_paths], ignore_index=True))
    for path in flags_paths:
        flags = read_json(path)
        rows += detection_rows(flags["model"], flags)
    rows += blocking_rows(read_table(accuracy_path))
    rows += not_surfaced_rows(read_table(not_surfaced_path))
    rows += prefix_rows(read_table(prefix_gains_path))
    rows += correlation_rows(read_json(correlation_path))
    write_table_rows(stamp(pd.DataFrame(rows), spec), output, CONTROL_SORT)
