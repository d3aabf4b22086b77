"""T3 semantic segmentation (ImageNet-S) and T4 referring segmentation (RefCOCO): one method.

Per layer, the value of the text's last token is matched against every image value (dot product
by default, cosine as a variant); the score map is min-max normalised per image, bilinearly
upsampled and thresholded at tau: one fixed value, or per layer the best of a candidate grid on
held-out tuning images (SPEC T3; `tune_images`, the split drawn by imagekv.probes.splits). T3
scores mIoU over classes (intersections and unions summed per class over its images); T4 the mean
IoU over expressions. Both also report pointing accuracy: the
fraction of queries whose arg-max token has its cell centre on the ground-truth mask.
A query reads the image features and the text value under its `features_key` and `text_key` (its
image and text, or for E5 per-item stores its own item's, imagekv.prefixes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from imagekv.datasets.schema import TextQuery
from imagekv.probes import FeatureSource, metric_rows
from imagekv.probes.features import kept_tokens, l2_normalize, probe_device, to_pixels, token_features
from imagekv.probes.metrics import class_miou, intersection_union, iou, pointing_hit

DEFAULTS = {
    "threshold": 0.5,  # tau on the min-max normalised, upsampled score map, where not tuned
    "similarity": "dot",  # "dot" (the paper) or "cosine"
    "tune_images": 0,  # images held out to tune tau per layer (SPEC T3: 50); 0 = the fixed threshold
    "tune_thresholds": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],  # the candidates for tau
}
SIMILARITIES = ("dot", "cosine")
QueryScore = tuple[str, np.ndarray, list[bool]]  # class, intersections and unions, pointing hits


def semantic_miou(classes: list[str], counts: np.ndarray) -> np.ndarray:
    """T3: mIoU over classes (intersections and unions summed per class). counts [Q, 2, ...]."""
    return class_miou(classes, counts[:, 0], counts[:, 1])


def referring_miou(classes: list[str], counts: np.ndarray) -> np.ndarray:
    """T4: mean IoU over expressions. counts [Q, 2, ...]."""
    return iou(counts[:, 0], counts[:, 1]).mean(0)


def summarize_semantic(scores: Sequence[QueryScore], layers: Sequence[int], params: dict) -> list[dict]:
    """T3: mIoU over classes (the query's `category`, else its text)."""
    return _summarize(scores, layers, semantic_miou)


def summarize_referring(scores: Sequence[QueryScore], layers: Sequence[int], params: dict) -> list[dict]:
    """T4: mean IoU over expressions."""
    return _summarize(scores, layers, referring_miou)


def tune_semantic(samples: Iterable[TextQuery], source: FeatureSource, params: dict) -> dict:
    return _tune(samples, source, params, semantic_miou)


def tune_referring(samples: Iterable[TextQuery], source: FeatureSource, params: dict) -> dict:
    return _tune(samples, source, params, referring_miou)


def score(query: TextQuery, source: FeatureSource, params: dict) -> QueryScore:
    """`params["threshold"]` is one tau or one per layer of `source` (as `_tune` chose them)."""
    taus = np.broadcast_to(np.asarray(params["threshold"], dtype=float), (len(source.layers),))
    return _score_query(query, source, params["similarity"], taus[None])


def _summarize(scores: Sequence[QueryScore], layers: Sequence[int], metric) -> list[dict]:
    classes, counts, hits = _stack(scores)
    n_miou = len(set(classes)) if metric is semantic_miou else len(counts)
    return metric_rows(layers, "miou", metric(classes, counts)[0], n_miou) + metric_rows(
        layers, "pointing", hits.mean(0), len(hits)
    )


def _tune(samples, source: FeatureSource, params: dict, metric) -> dict:
    """{"threshold": per layer of `source`, the candidate tau with the best metric on `samples`}
    (the first candidate among equals)."""
    candidates = np.asarray(params["tune_thresholds"], dtype=float)
    if not len(candidates):
        raise ValueError("text query probe: tune_thresholds is empty")
    grid = np.repeat(candidates[:, None], len(source.layers), axis=1)  # [K, L]
    classes, counts, _ = _stack([_score_query(query, source, params["similarity"], grid) for query in samples])
    return {"threshold": candidates[metric(classes, counts).argmax(0)].tolist()}


def _score_query(query: TextQuery, source, similarity: str, taus: np.ndarray) -> QueryScore:
    """The query's class, [2, K, L] intersection and union at each row of `taus` [K, L], [L]
    pointing hits."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"probes: similarity must be one of {SIMILARITIES}, got {similarity!r}")
    scores = query_scores(query, source, similarity)  # [L, T] in [0, 1]
    grid = source.grid(query.features_key)
    pred = to_pixels(scores, grid)[None] >= taus[:, :, None, None]  # [K, L, H, W]
    centres = grid.centers()[scores.argmax(1).cpu().numpy()]
    return (query.category or query.text, np.stack(intersection_union(pred, query.mask)),
            [pointing_hit(tuple(c), query.mask) for c in centres])


def _stack(scores: Sequence[QueryScore]) -> tuple[list[str], np.ndarray, np.ndarray]:
    if not scores:
        raise ValueError("text query probe: no queries")
    return ([c for c, _, _ in scores], np.stack([counts for _, counts, _ in scores]),
            np.asarray([hits for _, _, hits in scores], dtype=float))


def query_scores(query: TextQuery, source: FeatureSource, similarity: str) -> torch.Tensor:
    """[L, T] per-layer text-image similarity, min-max normalised over the image's tokens; excluded
    tokens score 0 (background) and take no part in the normalisation."""
    cosine = similarity == "cosine"
    image = token_features(source, query.features_key, normalize=cosine)  # [L, T, C]
    text = source.text(query.text_key).to(probe_device(), torch.float32)  # [L, C]
    if cosine:
        text = l2_normalize(text)
    scores = torch.einsum("ltc,lc->lt", image, text)
    keep = kept_tokens(source, query.features_key)
    if not keep.any():
        raise ValueError(f"text query on {query.features_key!r}: every token is excluded")
    low = scores.masked_fill(~keep, float("inf")).amin(1, keepdim=True)
    high = scores.masked_fill(~keep, float("-inf")).amax(1, keepdim=True)
    return ((scores - low) / (high - low).clamp_min(1e-12)).masked_fill(~keep, 0.0)
