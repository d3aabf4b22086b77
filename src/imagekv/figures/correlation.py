"""R-F4 (SPEC E2): the MLM's perception score against the quality of its input projection.

Two panels, one per reading of E2: x1 = projection-probe quality (the primary reading) and x2 = the
best LM layer's gain over it, each the mean over tasks of the metric min-max normalised across the
models; y = BLINK accuracy of the unblocked model. One labelled point per MLM; the Pearson and
Spearman correlations are printed in each panel, marked descriptive when there are too few models
for any test. Reads the correlation.json the `correlation` rule writes; every number shown is in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imagekv.figures.style import MODEL_COLORS, apply_style, panels, save
from imagekv.io import read_json
from imagekv.labels import MODEL_LABELS, Provenance

READINGS = {
    "projection_quality": "input-projection quality (x1, normalised)",
    "lm_gain": "best-layer gain over projection (x2, normalised)",
}


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    result = read_json(results)
    apply_style()
    fig, axes = panels(len(READINGS), panel_size=(3.0, 2.6))
    for ax, (reading, label) in zip(axes, READINGS.items()):
        draw_reading(ax, result[reading])
        ax.set_xlabel(label)
        ax.set_ylabel(f"BLINK {result['spec']['subtask']} accuracy")
    save(fig, outputs, Provenance.from_correlation(result, run, scale))


def draw_reading(ax, reading: dict) -> None:
    """One labelled point per model and the correlations of this reading."""
    for model, x, y in zip(reading["models"], reading["x"], reading["y"]):
        ax.scatter([x], [y], color=MODEL_COLORS.get(model, "0.4"), s=30, zorder=3)
        ax.annotate(MODEL_LABELS.get(model, model), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(0.25)
    ax.text(0.03, 0.97, correlation_label(reading), transform=ax.transAxes, ha="left", va="top", fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})


def correlation_label(reading: dict) -> str:
    """"Pearson r = 0.87, Spearman rho = 1.00 (n = 3, descriptive)"; "undefined" where a statistic is."""
    def number(value: float | None) -> str:
        return "undefined" if value is None else f"{value:.2f}"

    note = f"n = {reading['n']}, descriptive" if reading["descriptive"] else f"n = {reading['n']}"
    return f"Pearson r = {number(reading['pearson'])}\nSpearman ρ = {number(reading['spearman'])}\n({note})"
