"""T3 semantic segmentation (ImageNet-S) and T4 referring segmentation (RefCOCO): one method.

Per layer, the value of the text's last token is matched against every image value (dot product
by default, cosine as a variant); the score map is min-max normalised per image, bilinearly
upsampled and thresholded at tau. T3 scores mIoU over classes (intersections and unions summed per
class over its images); T4 the mean IoU over expressions. Both also report pointing accuracy: the
fraction of queries whose arg-max token has its cell centre on the ground-truth mask.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from imagekv.datasets.schema import TextQuery
from imagekv.probes import FeatureSource, metric_rows
from imagekv.probes.features import kept_tokens, l2_normalize, probe_device, to_pixels, token_features
from imagekv.probes.metrics import class_miou, intersection_union, iou, pointing_hit

DEFAULTS = {
    "threshold": 0.5,  # tau on the min-max normalised, upsampled score map
    "similarity": "dot",  # "dot" (the paper) or "cosine"
}
SIMILARITIES = ("dot", "cosine")


def run_semantic(samples: Iterable[TextQuery], source: FeatureSource, params: dict) -> list[dict]:
    """T3: mIoU over classes (the query's `category`, else its text)."""
    classes, counts, hits = _score_queries(samples, source, params)
    miou = class_miou(classes, counts[:, 0], counts[:, 1])
    return _rows(source, miou, hits, len(set(classes)))


def run_referring(samples: Iterable[TextQuery], source: FeatureSource, params: dict) -> list[dict]:
    """T4: mean IoU over expressions."""
    _, counts, hits = _score_queries(samples, source, params)
    return _rows(source, iou(counts[:, 0], counts[:, 1]).mean(0), hits, len(counts))


def _rows(source: FeatureSource, miou: np.ndarray, hits: np.ndarray, n_miou: int) -> list[dict]:
    return metric_rows(source.layers, "miou", miou, n_miou) + metric_rows(
        source.layers, "pointing", hits.mean(0), len(hits)
    )


def _score_queries(samples, source, params) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per query: its class, [2, L] intersection and union, [L] pointing hits."""
    if params["similarity"] not in SIMILARITIES:
        raise ValueError(f"probes: similarity must be one of {SIMILARITIES}, got {params['similarity']!r}")
    classes, counts, hits = [], [], []
    for query in samples:
        scores = query_scores(query, source, params["similarity"])  # [L, T] in [0, 1]
        grid = source.grid(query.image_id)
        pred = to_pixels(scores, grid) >= params["threshold"]
        counts.append(np.stack(intersection_union(pred, query.mask)))
        centres = grid.centers()[scores.argmax(1).cpu().numpy()]
        hits.append([pointing_hit(tuple(c), query.mask) for c in centres])
        classes.append(query.category or query.text)
    if not counts:
        raise ValueError("text query probe: no queries")
    return classes, np.stack(counts), np.asarray(hits, dtype=float)


def query_scores(query: TextQuery, source: FeatureSource, similarity: str) -> torch.Tensor:
    """[L, T] per-layer text-image similarity, min-max normalised over the image's tokens; excluded
    tokens score 0 (background) and take no part in the normalisation."""
    cosine = similarity == "cosine"
    image = token_features(source, query.image_id, normalize=cosine)  # [L, T, C]
    text = source.text(query.text).to(probe_device(), torch.float32)  # [L, C]
    if cosine:
        text = l2_normalize(text)
    scores = torch.einsum("ltc,lc->lt", image, text)
    keep = kept_tokens(source, query.image_id)
    if not keep.any():
        raise ValueError(f"text query on {query.image_id!r}: every token is excluded")
    low = scores.masked_fill(~keep, float("inf")).amin(1, keepdim=True)
    high = scores.masked_fill(~keep, float("-inf")).amax(1, keepdim=True)
    return ((scores - low) / (high - low).clamp_min(1e-12)).masked_fill(~keep, 0.0)
