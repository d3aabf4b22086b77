"""R-F3: what the probes predict from LLaVA-OneVision's image values at its best layer, beside its
projector output and SigLIP, one row per probe: the image with its ground truth and the predicted
masks (T1 few-shot, T2 co-segmentation, T3 class name and T4 expression at the layer's tuned tau,
for the values only, T6 the last frame of a propagated clip), or for T5 the keypoints and the
predictions (hits under the probe's PCK threshold in green, misses in red)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagekv.datasets.schema import VOID
from imagekv.figures.style import apply_style, panels, save
from imagekv.io import read_json
from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.probes.headline import TASK_ORDER, TASK_TITLES

SOURCES = ("{model}", "{model} projection", "siglip")
COLUMNS = 5  # image, ground truth, up to three predictions


def plot(examples: str | Path, outputs: Sequence[str | Path], run: str, scale: str) -> None:
    examples = Path(examples)
    arrays, meta = np.load(examples), read_json(examples.with_suffix(".json"))
    model = meta["model"]
    sources = [source.format(model=model) for source in SOURCES]
    tasks = [task for task in TASK_ORDER if task in meta["layers"]]
    apply_style()
    fig, axes = panels(COLUMNS * len(tasks), columns=COLUMNS, panel_size=(1.8, 1.8))
    for row, task in enumerate(tasks):
        cells = axes[row * COLUMNS : (row + 1) * COLUMNS]
        present = [source for source in sources if f"{task}/pred/{source}" in arrays]
        if task == "semantic_corr":
            _correspondence_row(cells, arrays, present, meta["layers"][task])
        else:
            _segmentation_row(cells, arrays, task, present, meta)
    for ax in axes:
        ax.set_axis_off()
        ax.set(xticks=[], yticks=[])  # an axis that is off is still measured for each title: nothing to measure
    layers = ", ".join(f"{task} layer {meta['layers'][task]}" for task in tasks)
    save(fig, outputs, Provenance(run, scale, [model, "siglip"], grid="as extracted", prefix="none",
                                  samples="1 each", layers=f"{MODEL_LABELS.get(model, model)}: {layers}"))


def _label(source: str, layer: int) -> str:
    model, _, kind = source.partition(" ")
    name = MODEL_LABELS.get(model, model)
    if kind:
        return f"{name}\n{kind}"
    return name if model == "siglip" else f"{name}\nvalues, layer {layer}"


def _segmentation_row(axes, arrays, task: str, sources: list[str], meta: dict) -> None:
    image, truth = arrays[f"{task}/image"], arrays[f"{task}/truth"]
    layer, params = meta["layers"][task], meta["params"][task]
    top = max(1, int(np.where(truth == VOID, 0, truth).max()))  # the highest object label: one colour scale
    axes[0].imshow(image)
    axes[0].set_title(f"{TASK_TITLES[task]}\n" + (f"\"{meta['texts'][task]}\"" if task in meta["texts"] else ""),
                      fontsize=6)
    axes[1].imshow(image)
    axes[1].imshow(_overlay(truth), cmap="autumn", alpha=0.6, vmin=0, vmax=top)
    axes[1].set_title("ground truth")
    for ax, source in zip(axes[2:], sources):
        predicted = arrays[f"{task}/pred/{source}"]
        ax.imshow(image)
        ax.imshow(_overlay(predicted), cmap="winter", alpha=0.6, vmin=0, vmax=top)
        tau = f", tau {params['threshold']:g}" if "tune_images" in params else ""
        ax.set_title(_label(source, layer) + tau)


def _overlay(labels: np.ndarray) -> np.ma.MaskedArray:
    """Object labels over the image: background (0) and void (255) left transparent."""
    return np.ma.masked_where((labels == 0) | (labels == VOID), labels)


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
