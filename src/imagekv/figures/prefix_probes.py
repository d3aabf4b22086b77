"""R-F6: the image-value probes with a text prefix before the image over the no-prefix curves (SPEC E5).

One panel per (task, MLM): the headline metric per LM layer, one line per condition (imagekv.
interventions.prefix): each prefix in its own colour, the queries held fixed solid, the in-context
variant (T3/T4, the query after the image) dotted. Reads the collected prefix_probes.csv. Layer-0
values depend only on each token's own embedding, so every prefix's curve meets the baseline there;
the figure says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import seaborn as sns

from imagekv.figures.style import apply_style, panels, save
from imagekv.interventions.prefix import IN_CONTEXT, condition_order
from imagekv.labels import METRIC_LABELS, MODEL_LABELS, Provenance
from imagekv.probes.headline import HEADLINE_METRICS, TASK_ORDER, TASK_TITLES, headline
from imagekv.results import read_results

LAYER0_NOTE = ("Layer 0 cannot change with a prefix: a layer-0 value depends only on its own token's embedding. "
               "Solid: text query fixed (no prefix); dotted: query after the image (in context).")


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    rows = headline(read_results(results))
    if rows.empty:
        raise ValueError(f"{results}: no headline rows of the value probes")
    tasks = [t for t in TASK_ORDER if t in set(rows["task"])]
    models = sorted(rows["model"].unique())
    labels = condition_order(rows["prefix"])
    prefixes = list(dict.fromkeys(label.removeprefix(IN_CONTEXT) for label in labels))
    colours = dict(zip(prefixes, sns.color_palette("colorblind", len(prefixes))))
    apply_style()
    fig, axes = panels(len(tasks) * len(models), columns=len(models))
    cells = iter(axes)
    for task in tasks:
        for model in models:
            ax = next(cells)
            for label in labels:
                curve = rows[(rows["task"] == task) & (rows["model"] == model) & (rows["prefix"] == label)]
                if curve.empty:
                    continue
                curve = curve.sort_values("layer")
                in_context = label.startswith(IN_CONTEXT)
                ax.plot(curve["layer"], curve["value"], color=colours[label.removeprefix(IN_CONTEXT)],
                        linestyle=":" if in_context else "-", marker="s" if in_context else "o", markersize=3,
                        label=label)
            ax.set_title(f"{TASK_TITLES[task]}\n{MODEL_LABELS.get(model, model)}", fontsize=7)
            ax.set_xlabel("LM layer")
            ax.set_ylabel(METRIC_LABELS.get(HEADLINE_METRICS[task], HEADLINE_METRICS[task]))
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend([handles[label] for label in labels], labels, title="prefix", loc="outside upper center",
               ncols=min(len(labels), 6), fontsize=6, title_fontsize=6)
    fig.text(0.5, 0.0, LAYER0_NOTE, ha="center", va="top", fontsize=6, wrap=True)
    save(fig, outputs, Provenance.from_results(rows, run, scale, prefix=", ".join(labels)))
