"""R-F5 (a): the fraction of image key positions flagged input-agnostic per LM layer (SPEC E4).

One panel per MLM; one line per threshold tau of the sweep (the primary tau drawn thicker) and the
cosine cross-check dashed. Reads the collected key_variance.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import seaborn as sns

from imagekv.figures.style import apply_style, panels, save
from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.results import read_table


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    frame = read_table(results)
    if frame.empty:
        raise ValueError(f"{results}: no key-variance rows")
    models = sorted(frame["model"].unique())
    apply_style()
    fig, axes = panels(len(models))
    for ax, model in zip(axes, models):
        rows = frame[frame["model"] == model]
        draw_fractions(ax, rows)
        ax.set_title(MODEL_LABELS.get(model, model))
        ax.set_xlabel("LM layer")
        ax.set_ylabel("fraction of key positions flagged")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=6, loc="upper left")
    save(fig, outputs, provenance(frame, run, scale))


def draw_fractions(ax, rows) -> None:
    flagged = rows[rows["metric"] == "flagged_fraction"]
    colours = sns.color_palette("viridis", flagged["threshold"].nunique())
    for colour, (tau, curve) in zip(colours, flagged.groupby("threshold")):
        primary = bool(curve["primary"].iloc[0])
        ax.plot(curve["layer"], curve["value"], color=colour, marker="o", markersize=3,
                linewidth=2.0 if primary else 1.0, label=f"nu < {tau:g}" + (" (primary)" if primary else ""))
    cosine = rows[rows["metric"] == "cosine_flagged_fraction"]
    for threshold, curve in cosine.groupby("threshold"):
        ax.plot(curve["layer"], curve["value"], color="0.4", linestyle="--", linewidth=1.0,
                label=f"mean cosine > {threshold:g}")


def provenance(frame, run: str, scale: str) -> Provenance:
    depths = frame.groupby("model")["layer"].max() + 1
    return Provenance(
        run=run,
        scale=scale,
        models=sorted(frame["model"].unique()),
        grid=", ".join(sorted(frame["grid"].astype(str).unique())),
        prefix=", ".join(sorted(frame["prefix"].astype(str).unique())),
        samples=", ".join(f"{d} images={n}" for (d, n), _ in frame.groupby(["dataset", "num_images"])),
        layers=", ".join(f"{MODEL_LABELS.get(m, m)} {d}" for m, d in depths.items()),
    )
