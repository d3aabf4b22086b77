"""T2 co-segmentation (MSRC): joint k-means over the tokens of an image set, per layer.

The L2-normalised tokens of all images of a set are clustered together (all layers at once). With
K = 2 the foreground is the cluster holding the smaller share of the set's border tokens. With
K > 2 a cluster is foreground when it holds less than `border_share` of the border tokens and
appears (at least one token) in at least `appear_fraction` of the set's images. The token
foreground map is bilinearly upsampled and thresholded at 0.5. Scores: Jaccard (foreground IoU)
and precision (pixel accuracy), averaged over the images of a class, then over classes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from imagekv.datasets.schema import CosegSet
from imagekv.grid import TokenGrid
from imagekv.probes import FeatureSource, metric_rows
from imagekv.probes.features import keep_tokens, stacked_token_features, to_pixels
from imagekv.probes.kmeans import kmeans
from imagekv.probes.metrics import intersection_union, iou, pixel_accuracy

DEFAULTS = {
    "k": 2,
    "n_init": 10,
    "max_iter": 300,
    "seed": 0,
    "border_share": 0.5,  # K > 2: foreground clusters hold less than this share of border tokens
    "appear_fraction": 0.5,  # K > 2: ... and have tokens in at least this fraction of the images
}


def score(image_set: CosegSet, source: FeatureSource, params: dict) -> tuple[str, list[tuple[np.ndarray, ...]]]:
    """The set's class and, per image, its Jaccard and precision per layer."""
    if params["k"] < 2:
        raise ValueError(f"probes.coseg.k must be at least 2, got {params['k']}")
    return image_set.class_name, [
        (iou(*intersection_union(pred, mask)), pixel_accuracy(pred, mask))
        for pred, mask in zip(segment_set(image_set, source, params), image_set.masks, strict=True)
    ]


def summarize(scores: Sequence[tuple[str, list]], layers: Sequence[int], params: dict) -> list[dict]:
    jaccard: dict[str, list[np.ndarray]] = defaultdict(list)
    precision: dict[str, list[np.ndarray]] = defaultdict(list)
    for class_name, images in scores:
        for image_jaccard, image_precision in images:
            jaccard[class_name].append(image_jaccard)
            precision[class_name].append(image_precision)
    if not jaccard:
        raise ValueError("coseg: no image sets")

    def class_mean(per_class: dict[str, list[np.ndarray]]) -> np.ndarray:
        return np.mean([np.mean(values, axis=0) for values in per_class.values()], axis=0)

    return metric_rows(layers, "jaccard", class_mean(jaccard), len(jaccard)) + metric_rows(
        layers, "precision", class_mean(precision), len(jaccard)
    )


def segment_set(image_set: CosegSet, source: FeatureSource, params: dict) -> list[np.ndarray]:
    """Per image, the predicted foreground [L, H, W] bool; excluded tokens are left out of the
    clustering and predicted as background."""
    grids = [source.grid(image_id) for image_id in image_set.image_ids]
    keeps = [keep_tokens(source, image_id) for image_id in image_set.image_ids]
    keep = torch.from_numpy(np.concatenate(keeps))
    if not keep.any():
        raise ValueError(f"coseg set {image_set.set_id}: every token is excluded")
    tokens = stacked_token_features(source, image_set.image_ids, keeps)
    labels = kmeans(tokens, params["k"], n_init=params["n_init"], max_iter=params["max_iter"], seed=params["seed"])
    image_of_token = torch.cat([torch.full((g.num_tokens,), i) for i, g in enumerate(grids)])[keep].to(labels.device)
    border = torch.cat([torch.from_numpy(border_tokens(g)) for g in grids])[keep].to(labels.device)
    foreground = foreground_clusters(labels, image_of_token, border, len(grids), params)  # [L, K]
    token_fg = torch.zeros(labels.shape[0], len(keep), device=labels.device)
    token_fg[:, keep.to(labels.device)] = foreground.gather(1, labels).float()  # [L, N]
    pieces = torch.split(token_fg, [g.num_tokens for g in grids], dim=1)
    return [to_pixels(piece, grid) >= 0.5 for piece, grid in zip(pieces, grids)]


def foreground_clusters(
    labels: torch.Tensor, image_of_token: torch.Tensor, border: torch.Tensor, num_images: int, params: dict
) -> torch.Tensor:
    """[L, K] bool: which clusters are foreground, per layer."""
    k = params["k"]
    one_hot = torch.nn.functional.one_hot(labels, k).float()  # [L, N, K]
    border_share = one_hot[:, border].sum(1) / border.sum()  # [L, K]
    if k == 2:
        return torch.nn.functional.one_hot(border_share.argmin(1), 2).bool()
    per_image = torch.zeros(labels.shape[0], num_images, k, device=labels.device)
    per_image.index_add_(1, image_of_token, one_hot)
    appear = (per_image > 0).float().mean(1)  # [L, K] fraction of images holding the cluster
    return (border_share < params["border_share"]) & (appear >= params["appear_fraction"])


def border_tokens(grid: TokenGrid) -> np.ndarray:
    """[rows*cols] bool: tokens on the outer ring of the grid."""
    ring = np.zeros((grid.rows, grid.cols), dtype=bool)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    return ring.ravel()
