"""R-A1 (appendix): one figure per task with every summary metric of its probe per LM layer.

The companion of R-F2 at full detail: absolute layer indices, and the task's secondary metrics
(e.g. FB-IoU beside mIoU, J and F beside J&F). Per-fold / per-category breakdowns stay in the
result table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imagekv import pairing as pairs
from imagekv.figures.layerwise import draw_curves, figure_legend
from imagekv.figures.style import apply_style, panels, save
from imagekv.labels import METRIC_LABELS, Provenance
from imagekv.probes.headline import HEADLINE_METRICS, TASK_TITLES
from imagekv.results import read_results


def plot(
    results: str | Path, outputs: Sequence[str | Path], run: str, scale: str, task: str,
    pairing: str | dict | None = None,
) -> None:
    pairing = pairs.parse(pairing)
    frame = read_results(results)
    rows = frame[(frame["task"] == task) & (frame["prefix"] == "none")]
    if rows.empty:
        raise ValueError(f"{results}: no rows for task {task!r} (prefix none)")
    metrics = summary_metrics(rows["metric"], task)
    apply_style()
    # At least the width of a three-panel row, so the shared legend fits above one or two panels.
    fig, axes = panels(len(metrics), panel_size=(max(2.5, 7.5 / len(metrics)), 2.1))
    for ax, metric in zip(axes, metrics):
        draw_curves(ax, rows[rows["metric"] == metric], x_axis="layer", pairing=pairing)
        ax.set_title(f"{TASK_TITLES[task]}: {METRIC_LABELS.get(metric, metric)}")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    figure_legend(fig, axes)
    save(fig, outputs, Provenance.from_results(rows, run, scale, pairing=pairing))


def summary_metrics(metrics: Sequence[str], task: str) -> list[str]:
    """The task's metrics without breakdowns ("miou/fold=0"), headline first, then by name."""
    names = {m for m in metrics if "/" not in m}
    return sorted(names, key=lambda m: (m != HEADLINE_METRICS[task], m))
