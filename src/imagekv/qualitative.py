"""R-F3 inputs: example predictions of the probes, small enough to plot without the features.

For the first sample of each of the six probes (a Pascal-5i episode, an MSRC set, an ImageNet-S
class, a RefCOCO expression, an SPair-71k pair, a DAVIS clip), the predictions of the MLM's image
values at its best layer for the task (read from the collected probe results), of its projector
output, and of SigLIP (the text-query probes, T3 and T4, only for the MLM's values, the only
features in the text's space), with the images and the ground truth, downsampled for display.
Each probe runs with the settings its best row records: for T3 and T4 the tau tuned at that layer,
and their example is the first query outside the tuning split. The figure rule reads only this
file, so restyling R-F3 never touches the feature stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from imagekv.datasets import load_dataset
from imagekv.features import FeatureStore, LayerView
from imagekv.images import load_rgb
from imagekv.io import atomic_path, write_json
from imagekv.probes import resolve_params
from imagekv.probes.coseg import segment_set
from imagekv.probes.correspondence import predict_points
from imagekv.probes.features import to_pixels
from imagekv.probes.fewshot_seg import query_probabilities
from imagekv.probes.headline import HEADLINE_METRICS
from imagekv.probes.metrics import davis_objects, pck_hits
from imagekv.probes.splits import split_samples
from imagekv.probes.temporal import propagate
from imagekv.probes.text_query_seg import query_scores
from imagekv.results import read_results

DISPLAY_SIDE = 256  # longest side of the stored images and masks


def best_row(probes: Path, model: str, task: str) -> tuple[int, dict]:
    """The LM layer where `model`'s image values score best on `task` (headline metric, no prefix,
    the first of equals), and the probe settings its row records (T3/T4: the tau tuned there)."""
    frame = read_results(probes)
    rows = frame[
        (frame["model"] == model) & (frame["task"] == task) & (frame["representation"] == "values")
        & (frame["metric"] == HEADLINE_METRICS[task]) & (frame["prefix"] == "none")
    ]
    if rows.empty:
        raise ValueError(f"{probes}: no {task} rows for {model} values")
    best = rows.sort_values(["value", "layer"], ascending=[False, True]).iloc[0]
    return int(best["layer"]), json.loads(best["params"])


def write_examples(spec: dict, probes: Path, output: Path) -> None:
    """`spec` (imagekv.plan.qualitative_spec) names the model, the tasks' datasets and the stores."""
    arrays, meta = {}, {"model": spec["model"], "layers": {}, "params": {}, "texts": {}}
    for task, section in spec["tasks"].items():
        layer, params = best_row(probes, spec["model"], task)
        meta["layers"][task], meta["params"][task] = layer, params
        dataset = load_dataset(section["dataset"], Path(section["dataset_root"]), section["dataset_cfg"])
        sources = {name: _single_layer(FeatureStore(path), name, layer) for name, path in section["stores"].items()}
        sample = _first_scored(dataset, params, spec["split_seed"])
        example = EXAMPLES[task](dataset, sample, sources, resolve_params(task, params))
        if hasattr(sample, "text"):
            meta["texts"][task] = sample.text
        arrays.update({f"{task}/{key}": value for key, value in example.items()})
    with atomic_path(output) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    write_json(output.with_suffix(".json"), meta)


def _first_scored(dataset, params: dict, split_seed: int):
    """The first sample the probe scores: outside the tuning split of a tuned probe."""
    samples = list(dataset.samples())
    tuning = {id(sample) for sample in split_samples(samples, split_seed, params.get("tune_images", 0))["tune"]}
    return next(sample for sample in samples if id(sample) not in tuning)


def _single_layer(store: FeatureStore, name: str, layer: int) -> LayerView:
    """The MLM's values at `layer`; the projection and SigLIP have one layer only."""
    representation = "projection" if name.endswith("projection") else "values"
    view = store.view(representation)
    return LayerView(view, view.layers.index(layer) if len(view.layers) > 1 else 0)


def fewshot_example(dataset, episode, sources: dict, params: dict) -> dict[str, np.ndarray]:
    image = load_rgb(_path(dataset, episode.query))
    arrays = {"image": _display(image), "truth": _display_mask(episode.query_mask)}
    for name, source in sources.items():
        probabilities = query_probabilities(episode, source, params)
        predicted = to_pixels(probabilities, source.grid(episode.query))[0] >= params["threshold"]
        arrays[f"pred/{name}"] = _display_mask(predicted.astype(np.uint8))
    return arrays


def coseg_example(dataset, image_set, sources: dict, params: dict) -> dict[str, np.ndarray]:
    """The set's first image; the clustering runs over the whole set."""
    image = load_rgb(_path(dataset, image_set.image_ids[0]))
    arrays = {"image": _display(image), "truth": _display_mask(image_set.masks[0].astype(np.uint8))}
    for name, source in sources.items():
        predicted = segment_set(image_set, source, params)[0][0]
        arrays[f"pred/{name}"] = _display_mask(predicted.astype(np.uint8))
    return arrays


def text_query_example(dataset, query, sources: dict, params: dict) -> dict[str, np.ndarray]:
    image = load_rgb(_path(dataset, query.image_id))
    arrays = {"image": _display(image), "truth": _display_mask(query.mask.astype(np.uint8))}
    for name, source in sources.items():
        scores = query_scores(query, source, params["similarity"])
        predicted = to_pixels(scores, source.grid(query.image_id))[0] >= params["threshold"]
        arrays[f"pred/{name}"] = _display_mask(predicted.astype(np.uint8))
    return arrays


def temporal_example(dataset, clip, sources: dict, params: dict) -> dict[str, np.ndarray]:
    """The clip's last frame, its objects propagated from the first frame's ground truth."""
    image = load_rgb(_path(dataset, clip.frame_ids[-1]))
    arrays = {"image": _display(image), "truth": _display_mask(clip.label_maps[-1].astype(np.uint8))}
    for name, source in sources.items():
        *_, last = propagate(clip, source, params, davis_objects(clip.label_maps[0]) + 1)
        arrays[f"pred/{name}"] = _display_mask(last[0].astype(np.uint8))
    return arrays


def correspondence_example(dataset, pair, sources: dict, params: dict) -> dict[str, np.ndarray]:
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


EXAMPLES = {
    "fewshot_seg": fewshot_example,
    "coseg": coseg_example,
    "semantic_seg": text_query_example,
    "referring_seg": text_query_example,
    "semantic_corr": correspondence_example,
    "temporal_corr": temporal_example,
}


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
