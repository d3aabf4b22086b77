"""E2: does the quality of the LM's input projection track the MLM's perception score?

Each model gets one number per reading: the mean over tasks of the task metric min-max normalised
across the models (x1: the input-projection probe; x2: the best layer's gain over it). Pearson and
Spearman correlations with the perception score (BLINK val accuracy by default) are reported, with
a flag that they are descriptive: with three models no test has power.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats

Metrics = Mapping[str, Mapping[str, float]]  # model -> task -> headline metric
DESCRIPTIVE_BELOW = 10  # fewer models than this: the correlations are descriptive only


def normalised_quality(metrics: Metrics) -> dict:
    """Per model, the mean over tasks of (metric - min) / (max - min) across models.

    Tasks on which all models score the same carry no ranking and are left out (listed).
    """
    models = sorted(metrics)
    tasks = sorted(set().union(*(metrics[m] for m in models)))
    missing = {m: sorted(set(tasks) - set(metrics[m])) for m in models if set(tasks) - set(metrics[m])}
    if missing:
        raise KeyError(f"every model needs every task's metric; missing: {missing}")
    table = np.array([[metrics[m][t] for t in tasks] for m in models], dtype=float)
    spread = table.max(axis=0) - table.min(axis=0)
    kept = spread > 0
    normalised = (table[:, kept] - table.min(axis=0)[kept]) / spread[kept]
    return {
        "score": {m: float(row.mean()) if kept.any() else float("nan") for m, row in zip(models, normalised)},
        "per_task": {t: dict(zip(models, column.tolist())) for t, column in zip(np.array(tasks)[kept], normalised.T)},
        "constant_tasks": [t for t, keep in zip(tasks, kept) if not keep],
    }


def correlate(x: Mapping[str, float], y: Mapping[str, float]) -> dict:
    """Pearson r and Spearman rho over the models both mappings share (None when undefined)."""
    models = sorted(set(x) & set(y))
    xs, ys = np.array([x[m] for m in models], float), np.array([y[m] for m in models], float)
    defined = len(models) >= 2 and np.isfinite(xs).all() and np.ptp(xs) > 0 and np.ptp(ys) > 0
    return {
        "models": models,
        "x": xs.tolist(),
        "y": ys.tolist(),
        "pearson": float(stats.pearsonr(xs, ys).statistic) if defined else None,
        "spearman": float(stats.spearmanr(xs, ys).statistic) if defined else None,
        "n": len(models),
        "descriptive": len(models) < DESCRIPTIVE_BELOW,
    }


def projection_correlation(projection: Metrics, best_layer: Metrics, perception: Mapping[str, float]) -> dict:
    """Both readings of E2: x1 = projection quality, x2 = the LM's best-layer gain over it."""
    gain = {m: {t: best_layer[m][t] - projection[m][t] for t in projection[m]} for m in projection}
    x1, x2 = normalised_quality(projection), normalised_quality(gain)
    return {
        "projection_quality": {**correlate(x1["score"], perception), "normalised": x1},
        "lm_gain": {**correlate(x2["score"], perception), "normalised": x2},
    }
