"""The names and the provenance footer that figures and tables share.

Kept apart from the figures' drawing style (imagekv.figures.style) so that restyling the figures
reruns only the plotting rules: the table rules list this file, not the style, as their input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imagekv.pairing import notes as pairing_notes

ACROSS_MODELS = "all"  # the model column of a result computed across the models (E2's control)
MODEL_LABELS = {
    "llava_onevision": "LLaVA-OneVision",
    "qwen2_5_vl": "Qwen2.5-VL",
    "llava_next": "Llama-3-LLaVA-NeXT",
    "siglip": "SigLIP",
    "clip": "CLIP ViT-L/14-336",
    "oracle": "oracle",
    "noise": "noise",
    ACROSS_MODELS: "across the models",
}
METRIC_LABELS = {"miou": "mIoU", "fbiou": "FB-IoU", "jaccard": "Jaccard", "precision": "precision",
                 "pck@0.1": "PCK@0.1", "j&f": "J&F", "j": "J", "f": "F", "pointing": "pointing acc."}
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

    @classmethod
    def from_correlation(cls, result: dict, run: str, scale: str) -> "Provenance":
        """The provenance of E2's correlation.json (imagekv.interventions.correlation_run)."""
        spec = result["spec"]
        return cls(
            run=run, scale=scale, models=spec["models"], grid="probe grids", prefix="none",
            samples=f"tasks={','.join(result['tasks'])}; perception=BLINK {spec['subtask']} ({spec['condition']})",
        )

    @classmethod
    def from_controls(cls, frame, run: str, scale: str) -> "Provenance":
        """The provenance of the controls' controls.csv (imagekv.interventions.controls): no prefix,
        but E5's rows compare the neutral and the find prefixes with none."""
        passing = int(frame["pass"].astype(bool).sum())
        return cls(
            run=run, scale=scale, models=sorted(set(frame["model"]) - {ACROSS_MODELS}),
            grid="fixed layout (planted twins)",
            prefix="none (E5 rows: neutral, find)", samples=f"controls={len(frame)}, passing={passing}",
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
