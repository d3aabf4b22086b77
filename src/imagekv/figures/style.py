"""The one style every figure shares, the provenance footer, and deterministic saving.

Editing this file reruns every plotting rule and nothing else (the plotting rules list it as input).
matplotlib and seaborn are imported on first use: table jobs and the Snakefile, which read only the
labels and the footer from here, never pay for them.
"""

from __future__ import annotations

from collections.abc import Sequence
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imagekv.io import atomic_path
from imagekv.pairing import notes as pairing_notes

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

MODEL_LABELS = {
    "llava_onevision": "LLaVA-OneVision",
    "qwen2_5_vl": "Qwen2.5-VL",
    "llava_next": "Llama-3-LLaVA-NeXT",
    "siglip": "SigLIP",
    "clip": "CLIP ViT-L/14-336",
    "oracle": "oracle",
    "noise": "noise",
}
# The first three colours of seaborn's "colorblind" palette (seaborn/palettes.py, SEABORN_PALETTES),
# written out so that reading a label does not import seaborn.
MODEL_COLORS = dict(zip(("llava_onevision", "qwen2_5_vl", "llava_next"), ("#0173B2", "#DE8F05", "#029E73")))
REFERENCE_STYLE = {"siglip": ("black", ":"), "clip": ("black", "-."), "oracle": ("0.6", "-"), "noise": ("0.6", "--")}
# Lines in an MLM's colour: its projector output, its own vision tower, its own reference encoders.
PROJECTION_LINE, TOWER_LINE, OWN_REFERENCE_LINE = "--", ":", "-."
SMOKE_MARK = "smoke scale: random-weight models"
METRIC_LABELS = {"miou": "mIoU", "fbiou": "FB-IoU", "jaccard": "Jaccard", "precision": "precision",
                 "pck@0.1": "PCK@0.1", "j&f": "J&F", "j": "J", "f": "F", "pointing": "pointing acc."}
FOOTER_FONTSIZE = 6
FOOTER_CHARS_PER_INCH = 20  # characters of the footer font per inch of figure width


@dataclass(frozen=True)
class Provenance:
    """What produced a figure or table, printed in its footer."""

    run: str
    scale: str
    models: Sequence[str]
    grid: str
    prefix: str
    samples: str
    layers: str = ""
    notes: tuple[str, ...] = ()  # e.g. the reference pairing's (imagekv.pairing)

    @classmethod
    def from_results(
        cls, frame, run: str, scale: str, prefix: str = "none", pairing: dict | None = None
    ) -> "Provenance":
        """Models, grids, depths and sample sizes as they appear in a tidy result frame; with a
        reference `pairing` (imagekv.pairing), the notes of its models."""
        mlm = frame[frame["representation"] == "values"]
        depths = mlm.groupby("model")["layer"].max() + 1
        return cls(
            run=run,
            scale=scale,
            models=sorted(frame["model"].unique()),
            grid=", ".join(sorted(frame["grid"].astype(str).unique())),
            prefix=prefix,
            samples=", ".join(f"{t}={n}" for t, n in frame.groupby("task")["n"].max().items()),
            layers=", ".join(f"{MODEL_LABELS.get(m, m)} {d}" for m, d in depths.items()),
            notes=pairing_notes(pairing, frame["model"]),
        )

    def footer(self) -> str:
        parts = [
            f"run: {self.run} ({self.scale})",
            "models: " + ", ".join(MODEL_LABELS.get(m, m) for m in self.models),
            f"layers: {self.layers}" if self.layers else "",
            f"grid: {self.grid}",
            f"prefix: {self.prefix}",
            f"n: {self.samples}",
            *self.notes,
        ]
        return " | ".join(p for p in parts if p)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def apply_style() -> None:
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    pyplot().rcParams.update({"figure.dpi": 150, "savefig.bbox": "tight", "pdf.fonttype": 42})


def panels(
    count: int, columns: int = 3, panel_size: tuple[float, float] = (2.5, 2.1)
) -> tuple[plt.Figure, list[plt.Axes]]:
    """A constrained-layout grid of `count` panels (at most `columns` per row), so tick and axis
    labels of neighbouring panels never collide; unused cells are removed."""
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    fig, axes = pyplot().subplots(
        rows, columns, figsize=(panel_size[0] * columns, panel_size[1] * rows), squeeze=False, layout="constrained"
    )
    cells = list(axes.flat)
    for unused in cells[count:]:
        unused.remove()
    return fig, cells[:count]


def stamp(fig: plt.Figure, provenance: Provenance) -> None:
    """The provenance footer under everything drawn so far, and at smoke scale a watermark.

    Call it last: the figure is laid out first and the footer goes below the lowest artist (tick
    labels, axis labels, legends), wrapped to the figure's width, so nothing overlaps it.
    """
    fig.canvas.draw()
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    footer = textwrap.fill(provenance.footer(), width=int(FOOTER_CHARS_PER_INCH * max(drawn.width, 3.0)))
    fig.text(
        drawn.x0 / fig.get_figwidth() + drawn.width / 2 / fig.get_figwidth(),
        (drawn.y0 - 0.05) / fig.get_figheight(),
        footer, ha="center", va="top", fontsize=FOOTER_FONTSIZE, color="0.3",
    )
    if provenance.scale == "smoke":
        fig.text(
            0.5, 0.5, SMOKE_MARK, ha="center", va="center", rotation=20, fontsize=min(22, 3 * fig.get_figwidth()),
            color="red", alpha=0.25, transform=fig.transFigure, zorder=100,
        )


def save(fig: plt.Figure, outputs: Sequence[str | Path]) -> None:
    """Write each output (format from its suffix) atomically, without timestamps in the file."""
    for output in outputs:
        fmt = Path(output).suffix.lstrip(".")
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(output) as tmp:
            fig.savefig(tmp, format=fmt, metadata=metadata)
    pyplot().close(fig)
