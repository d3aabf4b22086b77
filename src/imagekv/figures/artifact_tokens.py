"""R-F5 (c): the input-agnostic image tokens and their value norms (SPEC E4.2, the artifact check).

One figure per MLM. One panel per shown layer (the layers of the nu maps, R-F5 b): the mean value
norm of every position of the fixed token grid over the pool's images, the positions flagged
input-agnostic at the primary tau marked, the mean norm of the flagged and of the other positions in
the title. A last panel sets each position's value norm against its nu at those layers, the flagged
ones in colour: an artifact shows as flagged tokens of unusually high or low norm. Reads the model's
key_variance.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter

from imagekv.figures.key_variance_maps import grid_shape, shown_rows
from imagekv.figures.style import apply_style, panels, save
from imagekv.io import read_json
from imagekv.labels import MODEL_LABELS, Provenance


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    record = read_json(results)
    if "value_norm_map" not in record:
        raise ValueError(f"{results}: no value_norm_map; the key-variance job stores value norms with the keys")
    rows, cols = grid_shape(record["grid"], results)
    nu, norms = (np.asarray(record[key], dtype=float) for key in ("nu", "value_norm_map"))  # [L, P]
    if nu.shape != norms.shape or nu.shape != (len(record["layers"]), rows * cols):
        raise ValueError(f"{results}: nu {nu.shape} and value_norm_map {norms.shape} do not match "
                         f"{len(record['layers'])} layers x {rows}x{cols} positions")
    shown = shown_rows(len(record["layers"]))
    flagged = nu < record["tau"]
    apply_style()
    fig, axes = panels(len(shown) + 1, columns=4, panel_size=(2.2, 2.2))
    for ax, row in zip(axes, shown):
        image = ax.imshow(norms[row].reshape(rows, cols), cmap="viridis")
        marked = np.flatnonzero(flagged[row])
        ax.scatter(marked % cols, marked // cols, s=6, color="red", marker="o")
        ax.set_title(f"layer {record['layers'][row]}: ‖v‖ {_mean(norms[row], flagged[row])} flagged, "
                     f"{_mean(norms[row], ~flagged[row])} other", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.7)
    scatter = axes[len(shown)]
    for row in shown:
        scatter.scatter(nu[row], norms[row], s=3, color="0.7")
        scatter.scatter(nu[row][flagged[row]], norms[row][flagged[row]], s=6, color="red")
    scatter.axvline(record["tau"], color="black", linestyle="--", linewidth=0.8)
    scatter.set_xscale("log")
    scatter.xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a short log range collide
    scatter.set_xlabel("ν (cross-image key variance / median)")
    scatter.set_ylabel("mean value norm ‖v‖")
    scatter.set_title("shown layers; red = flagged (ν < τ)", fontsize=7)
    fig.suptitle(f"{MODEL_LABELS.get(record['model'], record['model'])}: input-agnostic tokens (red, "
                 f"ν < τ = {record['tau']:g}) and their value norms")
    spec = record["spec"]
    save(fig, outputs, Provenance(
        run=run, scale=scale, models=[record["model"]], grid=record["grid"], prefix=spec.get("prefix", "none"),
        samples=f"{spec.get('dataset', 'pool')} images={record['num_images']}",
        layers=", ".join(str(record["layers"][row]) for row in shown),
    ))


def _mean(norms: np.ndarray, mask: np.ndarray) -> str:
    return f"{norms[mask].mean():.3g}" if mask.any() else "none"
