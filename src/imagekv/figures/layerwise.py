"""R-F2: the headline metric of each probe per LM layer, on a shared normalised-depth axis.

One panel per task, one line per MLM (image values), the MLM's projector output as a dashed line in
its colour, and SigLIP and the calibration backbones (oracle, noise) as grey reference lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from imagekv.figures.style import (
    MODEL_COLORS, MODEL_LABELS, REFERENCE_STYLE, Provenance, apply_style, save, stamp,
)
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, TASK_TITLES
from imagekv.results import read_results


def headline_rows(frame: pd.DataFrame, prefix: str = "none") -> pd.DataFrame:
    """Rows of each task's headline metric, for one prefix."""
    wanted = frame["task"].map(HEADLINE_METRICS)
    return frame[(frame["metric"] == wanted) & (frame["prefix"] == prefix)]


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    frame = headline_rows(read_results(results))
    tasks = [t for t in TASK_ORDER if t in set(frame["task"])]
    apply_style()
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks), 2.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        _panel(ax, frame[frame["task"] == task], task)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, 1.12), frameon=False)
    stamp(fig, Provenance.from_results(frame, run, scale))
    save(fig, outputs)


def _panel(ax: plt.Axes, rows: pd.DataFrame, task: str) -> None:
    for model, color in MODEL_COLORS.items():
        curve = rows[(rows["model"] == model) & (rows["representation"] == "values")].sort_values("layer")
        if curve.empty:
            continue
        depth = curve["layer"] / max(curve["layer"].max(), 1)
        ax.plot(depth, curve["value"], color=color, marker="o", markersize=2.5, label=MODEL_LABELS[model])
        for value in rows[(rows["model"] == model) & (rows["representation"] == "projection")]["value"]:
            ax.axhline(value, color=color, linestyle="--", linewidth=0.9, label=f"{MODEL_LABELS[model]} projection")
    for reference, (color, style) in REFERENCE_STYLE.items():
        for value in rows[rows["representation"] == reference]["value"]:
            ax.axhline(value, color=color, linestyle=style, linewidth=0.9, label=MODEL_LABELS[reference])
    ax.set_title(TASK_TITLES[task])
    ax.set_xlabel("normalised LM depth")
    ax.set_ylabel(HEADLINE_METRICS[task])
    ax.set_xlim(0, 1)
