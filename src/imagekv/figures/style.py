"""The one style every figure shares, the footer's placement, and deterministic saving.

Editing this file reruns every plotting rule and nothing else (the plotting rules list it as input;
the names and the footer's text, which tables share, are in imagekv.labels). matplotlib and seaborn
are imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
import logging
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from imagekv.io import atomic_path
from imagekv.labels import SMOKE_MARK, Provenance

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    from matplotlib.transforms import Bbox

# The first three colours of seaborn's "colorblind" palette (seaborn/palettes.py, SEABORN_PALETTES),
# written out so that reading a colour does not import seaborn.
MODEL_COLORS = dict(zip(("llava_onevision", "qwen2_5_vl", "llava_next"), ("#0173B2", "#DE8F05", "#029E73")))
REFERENCE_STYLE = {"siglip": ("black", ":"), "clip": ("black", "-."), "oracle": ("0.6", "-"), "noise": ("0.6", "--")}
# Lines in an MLM's colour: its projector output, its own vision tower, its own reference encoders.
PROJECTION_LINE, TOWER_LINE, OWN_REFERENCE_LINE = "--", ":", "-."
FOOTER_FONTSIZE = 6
FOOTER_CHARS_PER_INCH = 20  # characters of the footer font per inch of figure width
# The OpenType layout tables, which a PDF never reads of an embedded font: the PDF places every glyph
# itself (and maps glyphs to text through its own ToUnicode map). Subsetting DejaVu Sans's copies of
# them was three quarters of a figure's font embedding, 0.1 of 0.13 CPU-s a subset, two subsets a
# figure. matplotlib builds fontTools' subsetting options itself, so they are dropped by default.
PDF_UNREAD_FONT_TABLES = ("GSUB", "GPOS", "GDEF", "MATH")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def apply_style() -> None:
    import seaborn as sns
    from fontTools import subset

    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    pyplot().rcParams.update({"figure.dpi": 150, "pdf.fonttype": 42})  # TrueType (Type 42), as journals ask
    defaults = subset.Options._drop_tables_default
    defaults.extend(table for table in PDF_UNREAD_FONT_TABLES if table not in defaults)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # not every subsetting step in the job's log


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


def stamp(fig: plt.Figure, provenance: Provenance) -> Bbox:
    """The provenance footer under everything drawn so far, and at smoke scale a watermark; returns
    the box (inches) to crop the saved figure to: everything drawn, padded as savefig pads.

    Call it last: the figure is laid out first and the footer goes below the lowest artist (tick
    labels, axis labels, legends), wrapped to the figure's width, so nothing overlaps it. The layout
    is final from here on: each format is drawn once, without laying the figure out again.
    """
    from matplotlib.transforms import Bbox

    if fig.get_layout_engine() is not None:
        fig.get_layout_engine().execute(fig)  # places the panels; no draw needed to measure them
    fig.set_layout_engine(None)
    renderer = fig.canvas.get_renderer()
    drawn = fig.get_tightbbox(renderer)  # inches
    footer = textwrap.fill(provenance.footer(), width=int(FOOTER_CHARS_PER_INCH * max(drawn.width, 3.0)))
    added = [fig.text(
        drawn.x0 / fig.get_figwidth() + drawn.width / 2 / fig.get_figwidth(),
        (drawn.y0 - 0.05) / fig.get_figheight(),
        footer, ha="center", va="top", fontsize=FOOTER_FONTSIZE, color="0.3",
    )]
    if provenance.scale == "smoke":
        added.append(fig.text(
            0.5, 0.5, SMOKE_MARK, ha="center", va="center", rotation=20, fontsize=min(22, 3 * fig.get_figwidth()),
            color="red", alpha=0.25, transform=fig.transFigure, zorder=100,
        ))
    # The figure's tight box with the added text, without measuring every panel again.
    boxes = [drawn] + [text.get_tightbbox(renderer).transformed(fig.dpi_scale_trans.inverted()) for text in added]
    return Bbox.union(boxes).padded(pyplot().rcParams["savefig.pad_inches"])


def save(fig: plt.Figure, outputs: Sequence[str | Path], provenance: Provenance) -> None:
    """Stamp the footer (`stamp`), then write each output (format from its suffix) atomically,
    without timestamps in the file, every format cropped to the same box."""
    crop = stamp(fig, provenance)
    for output in outputs:
        fmt = Path(output).suffix.lstrip(".")
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(output) as tmp:
            fig.savefig(tmp, format=fmt, metadata=metadata, bbox_inches=crop)
    pyplot().close(fig)
