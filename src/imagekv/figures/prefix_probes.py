"""R-F6: the image-value probes with a text prefix before the image over the no-prefix curves (SPEC E5).

One panel per (task, MLM): the headline metric per LM layer, one line per prefix (none solid, each
prefix in its own colour and dash). Reads the collected prefix_probes.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns

from imagekv.figures.style import METRIC_LABELS, MODEL_LABELS, Provenance, apply_style, panels, save, stamp
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, TASK_TITLES, headline, prefix_order
from imagekv.results import read_results

DASHES = ("-", "--", ":", "-.")


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    rows = headline(read_results(results))
    if rows.empty:
        raise ValueError(f"{results}: no headline rows of the value probes")
    tasks = [t for t in TASK_ORDER if t in set(rows["task"])]
    models = sorted(rows["model"].unique())
    prefixes = prefix_order(rows["prefix"])
    colours = dict(zip(prefixes, sns.color_palette("colorblind", len(prefixes))))
    apply_style()
    fig, axes = panels(len(tasks) * len(models), columns=len(models))
    cells = iter(axes)
    for task in tasks:
        for model in models:
            ax = next(cells)
            for index, prefix in enumerate(prefixes):
                curve = rows[(rows["task"] == task) & (rows["model"] == model) & (rows["prefix"] == prefix)]
                curve = curve.sort_values("layer")
                ax.plot(curve["layer"], curve["value"], color=colours[prefix], linestyle=DASHES[index % len(DASHES)],
                        marker="o", markersize=3, label=prefix)
            ax.set_title(f"{TASK_TITLES[task]}\n{MODEL_LABELS.get(model, model)}", fontsize=7)
            ax.set_xlabel("LM layer")
            ax.set_ylabel(METRIC_LABELS.get(HEADLINE_METRICS[task], HEADLINE_METRICS[task]))
    axes[0].legend(title="prefix", fontsize=6, title_fontsize=6)
    stamp(fig, Provenance.from_results(rows, run, scale, prefix=", ".join(prefixes)))
    save(fig, outputs)
