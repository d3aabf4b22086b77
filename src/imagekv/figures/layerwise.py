"""R-F2: the headline metric of each probe per LM layer, on a shared normalised-depth axis.

One panel per task, one line per MLM (image values); in its colour, the MLM's projector output
(dashed), its own fine-tuned vision tower (dotted) and its own reference encoders before MLM
training (dash-dot; SigLIP for LLaVA-OneVision, CLIP for LLaVA-NeXT, none for Qwen2.5-VL, whose
footer note says why: imagekv.pairing); the calibration backbones (oracle, noise) as grey lines.
`draw_curves` is the panel shared with the per-task appendix figures (imagekv.figures.task_curves).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from imagekv import pairing as pairs
from imagekv.figures.style import (
    MODEL_COLORS, OWN_REFERENCE_LINE, PROJECTION_LINE, REFERENCE_STYLE, TOWER_LINE, apply_style, panels, save,
)
from imagekv.labels import METRIC_LABELS, MODEL_LABELS, Provenance
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, TASK_TITLES, headline_rows
from imagekv.results import read_results

LEGEND_ROWS = 3
X_AXES = {"depth": "normalised LM depth", "layer": "LM layer"}


def plot(
    results: str | Path, outputs: Sequence[str | Path], run: str, scale: str,
    tasks: Sequence[str] | None = None, x_axis: str = "depth", pairing: str | dict | None = None,
) -> None:
    """One panel per task of `tasks` (default: every task in the results, in paper order; a string
    is a comma-separated list, as `--option tasks=coseg,fewshot_seg` passes it). `pairing`: each
    MLM's own references (imagekv.pairing)."""
    pairing = pairs.parse(pairing)
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    frame = headline_rows(read_results(results))
    present = set(frame["task"])
    missing = sorted(set(tasks or ()) - present)
    if missing:
        raise ValueError(f"{results}: no {', '.join(missing)} rows for the layer-wise figure")
    chosen = [t for t in TASK_ORDER if t in (set(tasks) if tasks else present)]
    apply_style()
    fig, axes = panels(len(chosen))
    for ax, task in zip(axes, chosen):
        draw_curves(ax, frame[frame["task"] == task], x_axis, pairing)
        ax.set_title(TASK_TITLES[task])
        ax.set_ylabel(METRIC_LABELS.get(HEADLINE_METRICS[task], HEADLINE_METRICS[task]))
    figure_legend(fig, axes)
    save(fig, outputs, Provenance.from_results(frame[frame["task"].isin(chosen)], run, scale, pairing=pairing))


def draw_curves(ax: plt.Axes, rows: pd.DataFrame, x_axis: str = "depth", pairing: dict | None = None) -> None:
    """Per-layer lines of one metric: MLM values (solid); in each MLM's colour its projection, its own
    tower and, with a `pairing`, its own references; the other references in grey/black."""
    if x_axis not in X_AXES:
        raise ValueError(f"unknown x axis {x_axis!r}; expected one of {sorted(X_AXES)}")
    paired = set()
    for model, color in MODEL_COLORS.items():
        curve = rows[(rows["model"] == model) & (rows["representation"] == "values")].sort_values("layer")
        if curve.empty:
            continue
        x = curve["layer"] / max(curve["layer"].max(), 1) if x_axis == "depth" else curve["layer"]
        ax.plot(x, curve["value"], color=color, marker="o", markersize=2.5, label=MODEL_LABELS[model])
        for representation, style in (("projection", PROJECTION_LINE), (pairs.TOWER, TOWER_LINE)):
            for value in rows[(rows["model"] == model) & (rows["representation"] == representation)]["value"]:
                ax.axhline(value, color=color, linestyle=style, linewidth=0.9,
                           label=f"{MODEL_LABELS[model]} {representation}")
        if pairing and model in pairing:
            for reference in pairing[model]["references"]:
                paired.add(reference)
                for value in rows[rows["representation"] == reference]["value"]:
                    ax.axhline(value, color=color, linestyle=OWN_REFERENCE_LINE, linewidth=0.9,
                               label=f"{MODEL_LABELS.get(reference, reference)} (encoder of {MODEL_LABELS[model]})")
    for reference, (color, style) in REFERENCE_STYLE.items():
        if reference in paired:
            continue
        for value in rows[rows["representation"] == reference]["value"]:
            ax.axhline(value, color=color, linestyle=style, linewidth=0.9, label=MODEL_LABELS[reference])
    ax.set_xlabel(X_AXES[x_axis])
    if x_axis == "depth":
        ax.set_xlim(0, 1)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def figure_legend(fig: plt.Figure, axes: Sequence[plt.Axes]) -> None:
    """One legend above the panels with every line any panel drew, each label once, in columns of
    three: the MLMs' values, their projections and towers, then the references."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    mlms = [MODEL_LABELS[m] for m in MODEL_COLORS]

    def group(label: str) -> int:
        return 0 if label in mlms else 1 if label.endswith((" projection", f" {pairs.TOWER}")) else 2

    labels = sorted(entries, key=group)  # stable: keeps the drawing order within a group
    fig.legend(
        [entries[label] for label in labels], labels, loc="outside upper center",
        ncol=-(-len(labels) // LEGEND_ROWS), frameon=False,
    )
