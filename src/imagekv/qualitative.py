"""R-F3 inputs: example predictions of the probes, small enough to plot without the features.

For one Pascal-5i episode and one SPair-71k pair, the predictions of the MLM's image values at its
best layer for the task (read from the collected probe results), of its projector output, and of
SigLIP, with the images and the ground truth, downsampled for display. The figure rule reads only
this file, so restyling R-F3 never touches the feature stores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imagekv.datasets import load_dataset
from imagekv.features import FeatureStore, LayerView
from imagekv.images import load_rgb
from imagekv.io import atomic_path, write_json
from imagekv.probes import resolve_params
from imagekv.probes.correspondence import predict_points
from imagekv.probes.features import to_pixels
from imagekv.probes.fewshot_seg import query_probabilities
from imagekv.probes.headline import HEADLINE_METRICS
from imagekv.probes.metrics import pck_hits
from imagekv.results import read_results

DISPLAY_SIDE = 256  # longest side of the stored images and masks


def best_layer(probes: Path, model: str, task: str) -> int:
    """The LM layer where `model`'s image values score best on `task` (headline metric, no prefix)."""
    frame = read_results(probes)
    rows = frame[
        (frame["model"] == model) & (frame["task"] == task) & (frame["representation"] == "values")
        & (frame["metric"] == HEADLINE_METRICS[task]) & (frame["prefix"] == "none")
    ]
    if rows.empty:
        raise ValueError(f"{probes}: no {task} rows for {model} values")
    return int(rows.sort_values(["value", "layer"], ascending=[False, True]).iloc[0]["layer"])


def write_examples(spec: dict, probes: Path, output: Path) -> None:
    """`spec` (imagekv.plan.qualitative_spec) names the model, the tasks' datasets and the stores."""
    arrays, meta = {}, {"model": spec["model"], "layers": {}}
    for task, section in spec["tasks"].items():
        layer = best_layer(probes, spec["model"], task)
        meta["layers"][task] = layer
        dataset = load_dataset(section["dataset"], Path(section["dataset_root"]), section["dataset_cfg"])
        sources = {name: _single_layer(FeatureStore(path), name, layer) for name, path in section["stores"].items()}
        example = EXAMPLES[task](dataset, sources, resolve_params(task, section["params"]))
        arrays.update({f"{task}/{key}": value for key, value in example.items()})
    with atomic_path(output) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    write_json(output.with_suffix(".json"), meta)


def _single_layer(store: FeatureStore, name: str, layer: int) -> LayerView:
    """The MLM's values at `layer`; the projection and SigLIP have one layer only."""
    representation = "projection" if name.endswith("projection") else "values"
    view = store.view(representation)
    return LayerView(view, view.layers.index(layer) if len(view.layers) > 1 else 0)


def fewshot_example(dataset, sources: dict, params: dict) -> dict[str, np.ndarray]:
    episode = next(iter(dataset.samples()))
    image = load_rgb(_path(dataset, episode.query))
    arrays = {"image": _display(image), "truth": _display_mask(episode.query_mask)}
    for name, source in sources.items():
        probabilities = query_probabilities(episode, source, params)
        predicted = to_pixels(probabilities, source.grid(episode.query))[0] >= params["threshold"]
        arrays[f"pred/{name}"] = _display_mask(predicted.astype(np.uint8))
    return arrays


def correspondence_example(dataset, sources: dict, params: dict) -> dict[str, np.ndarray]:
    pair = next(iter(dataset.samples()))
    visible = np.isfinite(pair.source_points).all(1) & np.isfinite(pair.target_points).all(1)
    source_image, target_image = (load_rgb(_path(dataset, image_id)) for image_id in (pair.source, pair.target))
    source_scale, target_scale = (_scale(image) for image in (source_image, target_image))
    arrays = {
        "source_image": _display(source_image), "target_image": _display(target_image),
        "source_points": pair.source_points[visible] * source_scale,
        "target_points": pair.target_points[visible] * target_scale,
    }
    for name, source in sources.items():
        predicted = predict_points(pair, source, pair.source_points[visible])[0]
        arrays[f"pred/{name}"] = predicted * target_scale
        arrays[f"hits/{name}"] = pck_hits(predicted, pair.target_points[visible], pair.target_bbox, params["alpha"])
    return arrays


EXAMPLES = {"fewshot_seg": fewshot_example, "semantic_corr": correspondence_example}


def _path(dataset, image_id: str) -> Path:
    return next(ref.path for ref in dataset.images() if ref.image_id == image_id)


def _scale(image: Image.Image) -> float:
    return min(1.0, DISPLAY_SIDE / max(image.size))


def _resized(image: Image.Image, resample: Image.Resampling) -> np.ndarray:
    scale = _scale(image)
    return np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), resample))


def _display(image: Image.Image) -> np.ndarray:
    return _resized(image, Image.Resampling.BILINEAR)


def _display_mask(mask: np.ndarray) -> np.ndarray:
    """Nearest-neighbour, so void (255) and the labels stay exact."""
    return _resized(Image.fromarray(mask), Image.Resampling.NEAREST)
