"""T5 semantic correspondence (SPair-71k): cosine nearest neighbour of keypoint tokens.

For each source keypoint, the L2-normalised token of the cell holding it is compared with every
target token; the predicted point is the centre of the most similar target cell, in original
target-image coordinates. PCK@alpha counts a keypoint correct within alpha * max(h, w) of the
target object's bounding box; reported over all keypoints and per category.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from imagekv.datasets.schema import KeypointPair
from imagekv.probes import FeatureSource, metric_rows
from imagekv.probes.features import kept_tokens, token_features
from imagekv.probes.metrics import pck_hits

DEFAULTS = {"alpha": 0.1}


def score(pair: KeypointPair, source: FeatureSource, params: dict) -> tuple[str, np.ndarray]:
    return pair.category, pair_hits(pair, source, params["alpha"])


def summarize(scores: Sequence[tuple[str, np.ndarray]], layers: Sequence[int], params: dict) -> list[dict]:
    metric = f"pck@{params['alpha']:g}"
    hits: dict[str, list[np.ndarray]] = defaultdict(list)
    for category, pair_hit in scores:
        hits[category].append(pair_hit)
    if not hits:
        raise ValueError("semantic_corr: no keypoint pairs")
    everything = np.concatenate([np.concatenate(h, axis=1) for h in hits.values()], axis=1)  # [L, N]
    rows = metric_rows(layers, metric, everything.mean(1), everything.shape[1])
    for category, per_pair in sorted(hits.items()):
        keypoints = np.concatenate(per_pair, axis=1)
        rows += metric_rows(layers, f"{metric}/category={category}", keypoints.mean(1), keypoints.shape[1])
    return rows


def pair_hits(pair: KeypointPair, source: FeatureSource, alpha: float) -> np.ndarray:
    """[L, N] PCK hits of the pair's keypoints with finite coordinates on both images."""
    visible = np.isfinite(pair.source_points).all(1) & np.isfinite(pair.target_points).all(1)
    predicted = predict_points(pair, source, pair.source_points[visible])
    return pck_hits(predicted, pair.target_points[visible], pair.target_bbox, alpha)


def predict_points(pair: KeypointPair, source: FeatureSource, points: np.ndarray) -> np.ndarray:
    """[L, N, 2] predicted target (x, y) of source points [N, 2]; excluded target tokens are never
    a candidate."""
    source_grid, target_grid = source.grid(pair.source), source.grid(pair.target)
    cells = [source_grid.token_of_point(x, y) for x, y in points]
    index = torch.tensor([row * source_grid.cols + col for row, col in cells], dtype=torch.long)
    source_tokens = token_features(source, pair.source)
    queries = source_tokens[:, index.to(source_tokens.device)]  # [L, N, C]
    similarity = torch.bmm(queries, token_features(source, pair.target).transpose(1, 2))  # [L, N, T]
    candidates = kept_tokens(source, pair.target)
    if not candidates.any():
        raise ValueError(f"pair {pair.pair_id}: every token of target {pair.target!r} is excluded")
    similarity = similarity.masked_fill(~candidates, float("-inf"))
    return target_grid.centers()[similarity.argmax(-1).cpu().numpy()]
