"""R-F3: what the probes predict from LLaVA-OneVision's image values at its best layer, beside its
projector output and SigLIP. Top row: a Pascal-5i query with its ground truth and the three
predicted masks; bottom row: an SPair-71k pair with the keypoints and the three predictions
(hits under the probe's PCK threshold in green, misses in red)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagekv.figures.style import MODEL_LABELS, Provenance, apply_style, panels, save, stamp
from imagekv.io import read_json

SOURCES = ("{model}", "{model} projection", "siglip")


def plot(examples: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    examples = Path(examples)
    arrays, meta = np.load(examples), read_json(examples.with_suffix(".json"))
    model = meta["model"]
    sources = [source.format(model=model) for source in SOURCES]
    apply_style()
    fig, axes = panels(10, columns=5, panel_size=(1.8, 1.8))
    _segmentation_row(axes[:5], arrays, sources, meta["layers"]["fewshot_seg"])
    _correspondence_row(axes[5:], arrays, sources, meta["layers"]["semantic_corr"])
    for ax in axes:
        ax.set_axis_off()
    layers = ", ".join(f"{task} layer {layer}" for task, layer in sorted(meta["layers"].items()))
    stamp(fig, Provenance(run, scale, [model, "siglip"], grid="as extracted", prefix="none", samples="1 each",
                          layers=f"{MODEL_LABELS.get(model, model)}: {layers}"))
    save(fig, outputs)


def _label(source: str, layer: int) -> str:
    model, _, kind = source.partition(" ")
    name = MODEL_LABELS.get(model, model)
    if kind:
        return f"{name}\n{kind}"
    return name if model == "siglip" else f"{name}\nvalues, layer {layer}"


def _segmentation_row(axes, arrays, sources: list[str], layer: int) -> None:
    image, truth = arrays["fewshot_seg/image"], arrays["fewshot_seg/truth"]
    axes[0].imshow(image)
    axes[0].set_title("query")
    axes[1].imshow(image)
    axes[1].imshow(np.ma.masked_where(truth != 1, truth), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
    axes[1].set_title("ground truth")
    for ax, source in zip(axes[2:], sources):
        predicted = arrays[f"fewshot_seg/pred/{source}"]
        ax.imshow(image)
        ax.imshow(np.ma.masked_where(predicted != 1, predicted), cmap="winter", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(_label(source, layer))


def _correspondence_row(axes, arrays, sources: list[str], layer: int) -> None:
    source_points, target_points = arrays["semantic_corr/source_points"], arrays["semantic_corr/target_points"]
    target = arrays["semantic_corr/target_image"]
    axes[0].imshow(arrays["semantic_corr/source_image"])
    axes[0].scatter(*source_points.T, s=12, c="yellow", edgecolors="black", linewidths=0.5)
    axes[0].set_title("source keypoints")
    axes[1].imshow(target)
    axes[1].scatter(*target_points.T, s=12, c="yellow", edgecolors="black", linewidths=0.5)
    axes[1].set_title("target keypoints")
    for ax, source in zip(axes[2:], sources):
        predicted, hits = arrays[f"semantic_corr/pred/{source}"], arrays[f"semantic_corr/hits/{source}"]
        ax.imshow(target)
        ax.scatter(*predicted.T, s=12, c=np.where(hits, "lime", "red"), edgecolors="black", linewidths=0.5)
        ax.set_title(_label(source, layer))
