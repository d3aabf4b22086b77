"""The controls figure (issue 18): per model and control, what each experiment recovered from the
planted twins, with its 95 % interval where it has one, against what was planted. Pass in green,
fail in red. Reads the controls.csv the `controls_results` rule writes; every number shown is in it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imagekv.figures.style import apply_style, panels, save
from imagekv.labels import ACROSS_MODELS, MODEL_LABELS, Provenance
from imagekv.results import read_table

PASS_COLORS = {True: "tab:green", False: "tab:red"}


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    frame = read_table(results)
    apply_style()
    models = sorted(set(frame["model"]) - {ACROSS_MODELS}) + sorted({ACROSS_MODELS} & set(frame["model"]))  # the models, then E2
    most = frame.groupby("model").size().max()
    fig, axes = panels(len(models), panel_size=(3.2, 2.6))
    for ax, model in zip(axes, models):
        rows = frame[frame["model"] == model].reset_index(drop=True)
        for y, row in rows.iterrows():
            color = PASS_COLORS[bool(row["pass"])]
            if row["ci_low"] == row["ci_low"]:  # not NaN: the control has an interval
                ax.plot([row["ci_low"], row["ci_high"]], [y, y], color=color, lw=2)
            ax.scatter([row["recovered"]], [y], color=color, zorder=3, s=18)
            planted = _number(row["planted"])
            if planted is not None:
                ax.scatter([planted], [y], marker="|", color="0.2", s=80, zorder=4)
        ax.set_yticks(range(len(rows)), [f"{e.split()[-1]}: {c}" for e, c in zip(rows["experiment"], rows["control"])])
        ax.set_ylim(most - 0.5, -0.5)  # one row height in every panel, first row on top
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_title(MODEL_LABELS.get(model, model))
        ax.set_xlabel("recovered (| planted)")
    save(fig, outputs, Provenance.from_controls(frame, run, scale))


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
