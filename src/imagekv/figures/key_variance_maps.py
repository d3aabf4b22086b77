"""R-F5 (b): maps of the normalised cross-image key variance nu over the image-token grid (SPEC E4).

One figure per MLM, one panel per shown layer (early to late, evenly spaced in depth), nu on a
shared logarithmic colour scale, the positions flagged input-agnostic at the primary tau marked
with a dot. Reads the model's key_variance.json (nu per layer and position of the fixed layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np

from imagekv.figures.style import apply_style, panels, save
from imagekv.io import read_json
from imagekv.labels import MODEL_LABELS, Provenance

SHOWN_LAYERS = 6  # at most this many layers, evenly spaced from the first to the last


def plot(results: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    record = read_json(results)
    rows, cols = grid_shape(record["grid"], results)
    nu = np.asarray(record["nu"], dtype=float)  # [L, P]
    if nu.shape != (len(record["layers"]), rows * cols):
        raise ValueError(f"{results}: nu has shape {nu.shape}, expected {len(record['layers'])} layers x {rows * cols}")
    shown = shown_rows(len(record["layers"]))
    apply_style()
    fig, axes = panels(len(shown), columns=3, panel_size=(2.2, 2.2))
    positive = nu[nu > 0]
    norm = mcolors.LogNorm(vmin=positive.min(), vmax=nu.max()) if positive.size else None
    for ax, row in zip(axes, shown):
        image = ax.imshow(nu[row].reshape(rows, cols), cmap="magma", norm=norm)
        flagged = np.flatnonzero(nu[row] < record["tau"])
        ax.scatter(flagged % cols, flagged // cols, s=6, color="cyan", marker="o")
        ax.set_title(f"layer {record['layers'][row]}: {len(flagged)} flagged", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="ν (cross-image key variance / median)")
    fig.suptitle(f"{MODEL_LABELS.get(record['model'], record['model'])}: dots = ν < τ = {record['tau']:g}")
    spec = record["spec"]
    save(fig, outputs, Provenance(
        run=run, scale=scale, models=[record["model"]], grid=record["grid"], prefix=spec.get("prefix", "none"),
        samples=f"{spec.get('dataset', 'pool')} images={record['num_images']}",
        layers=f"{len(record['layers'])}",
    ))


def grid_shape(label: str, source: str | Path) -> tuple[int, int]:
    """"ROWSxCOLS" -> (rows, cols)."""
    try:
        rows, cols = (int(part) for part in label.split("x"))
    except ValueError:
        raise ValueError(f"{source}: grid {label!r} is not ROWSxCOLS; nu maps need one fixed layout") from None
    return rows, cols


def shown_rows(num_layers: int) -> list[int]:
    """Row indices of at most SHOWN_LAYERS layers, evenly spaced, always the first and the last."""
    return sorted({int(round(i)) for i in np.linspace(0, num_layers - 1, min(SHOWN_LAYERS, num_layers))})
