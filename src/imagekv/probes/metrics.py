"""Metrics of the six probes, on numpy arrays.

Masks follow `imagekv.datasets.schema`: ground-truth masks are uint8 with 1 = foreground,
0 = background and 255 = void; void pixels count for nothing in any metric. Predictions are boolean
arrays that may carry leading dimensions (one prediction per layer): [..., H, W].
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from imagekv.datasets.schema import VOID


def intersection_union(pred: np.ndarray, gt: np.ndarray, positive: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts of pred & (gt == positive) and pred | (gt == positive), void excluded.

    pred [..., H, W] bool, gt [H, W]; returns two arrays of shape pred.shape[:-2].
    """
    valid = gt != VOID
    target = (gt == positive) & valid
    pred = np.asarray(pred, dtype=bool) & valid
    inter = (pred & target).sum(axis=(-2, -1))
    union = (pred | target).sum(axis=(-2, -1))
    return inter, union


def iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """inter / union, with 1 where both prediction and target are empty (the DAVIS convention)."""
    inter, union = np.asarray(inter, dtype=float), np.asarray(union, dtype=float)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def class_miou(classes: Sequence[str], inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Standard few-shot / semantic-segmentation mIoU: per class, sum intersections and unions over
    that class's samples, then average the per-class IoUs. inter, union [E, ...] -> [...]."""
    per_class = [iou(inter[idx].sum(0), union[idx].sum(0)) for idx in _groups(classes).values()]
    return np.mean(per_class, axis=0)


def fb_iou(inter_fg: np.ndarray, union_fg: np.ndarray, inter_bg: np.ndarray, union_bg: np.ndarray) -> np.ndarray:
    """Foreground-background IoU: the mean of the foreground IoU and the background IoU, each with
    intersections and unions summed over all samples. Inputs [E, ...] -> [...]."""
    return (iou(inter_fg.sum(0), union_fg.sum(0)) + iou(inter_bg.sum(0), union_bg.sum(0))) / 2


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Fraction of non-void pixels whose binary label pred matches gt (the co-segmentation
    "precision" P). pred [..., H, W] bool -> [...]."""
    valid = gt != VOID
    correct = (np.asarray(pred, dtype=bool) == (gt == 1)) & valid
    return correct.sum(axis=(-2, -1)) / max(int(valid.sum()), 1)


def pointing_hit(point: tuple[float, float], gt: np.ndarray) -> bool:
    """Whether pixel coordinate (x, y) falls on a foreground pixel of gt."""
    x, y = int(np.floor(point[0])), int(np.floor(point[1]))
    inside = 0 <= y < gt.shape[0] and 0 <= x < gt.shape[1]
    return bool(inside and gt[y, x] == 1)


def pck_hits(
    pred: np.ndarray, target: np.ndarray, bbox: tuple[float, float, float, float], alpha: float = 0.1
) -> np.ndarray:
    """Correct keypoints under PCK@alpha (SPair-71k): distance <= alpha * max(h, w) of the target
    object's bounding box (x0, y0, x1, y1). pred [..., N, 2], target [N, 2] -> bool [..., N]."""
    x0, y0, x1, y1 = bbox
    threshold = alpha * max(x1 - x0, y1 - y0)
    return np.linalg.norm(np.asarray(pred, dtype=float) - target, axis=-1) <= threshold


# --- DAVIS-2017 region (J) and boundary (F) measures, after the official davis2017-evaluation ---


def davis_j(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J of one frame: IoU of binary pred and gt outside void; 1 if both empty."""
    keep = np.ones_like(gt, dtype=bool) if void is None else ~void
    inter = np.sum(pred & gt & keep)
    union = np.sum((pred | gt) & keep)
    return 1.0 if union == 0 else float(inter / union)


def davis_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008) -> float:
    """Boundary F-measure of one frame (see `BoundaryMatcher`)."""
    return BoundaryMatcher(gt, void, bound_th).f_measure(pred)


class BoundaryMatcher:
    """The ground-truth side of the boundary F-measure, computed once and reused across predictions.

    Boundaries come from the masks with void pixels cleared; a boundary pixel matches if the other
    boundary lies within bound_th * image diagonal pixels (bound_th >= 1 is a pixel count), i.e.
    inside its dilation by a disk of that radius.
    """

    def __init__(self, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008):
        self.keep = np.ones_like(gt, dtype=bool) if void is None else ~void
        self.radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(gt.shape))
        self.boundary = mask_boundary(gt & self.keep)
        self.dilated = _dilate(self.boundary, self.radius) if self.boundary.any() else self.boundary

    def f_measure(self, pred: np.ndarray) -> float:
        pred_boundary = mask_boundary(pred & self.keep)
        n_pred, n_gt = int(pred_boundary.sum()), int(self.boundary.sum())
        if n_pred == 0 or n_gt == 0:
            # The official conventions: nothing predicted -> P=1, R=0; nothing to find -> P=0, R=1.
            return 1.0 if n_pred == n_gt else 0.0
        precision = np.sum(pred_boundary & self.dilated) / n_pred
        recall = np.sum(self.boundary & _dilate(pred_boundary, self.radius)) / n_gt
        return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask: pixels differing from their east, south or south-east
    neighbour (the official seg2bmap at the mask's own resolution)."""
    seg = mask.astype(bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _dilate(boundary: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by the disk {dx^2 + dy^2 <= radius^2}: exactly the pixels whose Euclidean
    distance to the boundary is <= radius, computed by a distance transform in O(H W)."""
    return ndimage.distance_transform_edt(~boundary) <= radius


def davis_objects(first_gt: np.ndarray) -> int:
    """Number of objects of a clip: ids 1..max of the first ground-truth frame (void aside)."""
    return int(np.max(np.where(first_gt == VOID, 0, first_gt)))


def davis_eval_frames(num_frames: int) -> range:
    """Frames the official semi-supervised evaluation scores: all but the given first frame and
    the last one (all but the first for clips of two frames)."""
    return range(1, num_frames - 1) if num_frames > 2 else range(1, num_frames)


def davis_frame_scores(
    pred_labels: Sequence[np.ndarray], gt: np.ndarray, num_objects: int, bound_th: float = 0.008
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of each object 1..num_objects on one frame, for several predicted label maps
    [H, W] of it (e.g. one per layer); returns (J, F), each [len(pred_labels), num_objects]."""
    void = gt == VOID
    j = np.zeros((len(pred_labels), num_objects))
    f = np.zeros_like(j)
    for obj in range(1, num_objects + 1):
        target = gt == obj
        matcher = BoundaryMatcher(target, void, bound_th)
        for row, labels in enumerate(pred_labels):
            j[row, obj - 1] = davis_j(labels == obj, target, void)
            f[row, obj - 1] = matcher.f_measure(labels == obj)
    return j, f


def davis_object_scores(
    pred_labels: np.ndarray, gt_labels: np.ndarray, bound_th: float = 0.008
) -> tuple[np.ndarray, np.ndarray]:
    """Per-object mean J and mean F of one clip, as the official semi-supervised evaluation
    computes them. pred_labels, gt_labels [T, H, W]; returns (J [K], F [K])."""
    num_objects = davis_objects(gt_labels[0])
    frames = davis_eval_frames(len(gt_labels))
    scores = [davis_frame_scores([pred_labels[t]], gt_labels[t], num_objects, bound_th) for t in frames]
    return np.mean([j[0] for j, _ in scores], axis=0), np.mean([f[0] for _, f in scores], axis=0)


def _groups(keys: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    return groups
