"""The one style every figure shares, the provenance footer, and deterministic saving.

Editing this file reruns every plotting rule and nothing else (the plotting rules list it as input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from imagekv.io import atomic_path  # noqa: E402

MODEL_LABELS = {
    "llava_onevision": "LLaVA-OneVision",
    "qwen2_5_vl": "Qwen2.5-VL",
    "llava_next": "Llama-3-LLaVA-NeXT",
    "siglip": "SigLIP",
    "oracle": "oracle",
    "noise": "noise",
}
MODEL_COLORS = dict(zip(("llava_onevision", "qwen2_5_vl", "llava_next"), sns.color_palette("colorblind", 3)))
REFERENCE_STYLE = {"siglip": ("black", ":"), "oracle": ("0.6", "-"), "noise": ("0.6", "--")}
SMOKE_MARK = "smoke scale: random-weight models"


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

    @classmethod
    def from_results(cls, frame, run: str, scale: str, prefix: str = "none") -> "Provenance":
        """Models, grids, depths and sample sizes as they appear in a tidy result frame."""
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
        )

    def footer(self) -> str:
        parts = [
            f"run: {self.run} ({self.scale})",
            "models: " + ", ".join(MODEL_LABELS.get(m, m) for m in self.models),
            f"layers: {self.layers}" if self.layers else "",
            f"grid: {self.grid}",
            f"prefix: {self.prefix}",
            f"n: {self.samples}",
        ]
        return " | ".join(p for p in parts if p)


def apply_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 150, "savefig.bbox": "tight", "pdf.fonttype": 42})


def stamp(fig: plt.Figure, provenance: Provenance) -> None:
    fig.text(0.5, -0.02, provenance.footer(), ha="center", va="top", fontsize=6, color="0.3", wrap=True)
    if provenance.scale == "smoke":
        fig.text(
            0.5, 0.5, SMOKE_MARK, ha="center", va="center", rotation=20, fontsize=22,
            color="red", alpha=0.25, transform=fig.transFigure, zorder=100,
        )


def save(fig: plt.Figure, outputs: Sequence[str | Path]) -> None:
    """Write each output (format from its suffix) atomically, without timestamps in the file."""
    for output in outputs:
        fmt = Path(output).suffix.lstrip(".")
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(output) as tmp:
            fig.savefig(tmp, format=fmt, metadata=metadata)
    plt.close(fig)
