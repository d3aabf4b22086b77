"""Probe metrics: hand-computed small cases, and torchmetrics or naive loops on random cases."""

import itertools

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAccuracy, BinaryJaccardIndex, MulticlassJaccardIndex

from imagekv.datasets.schema import VOID
from imagekv.probes import metrics

V = VOID


def random_case(rng, shape=(17, 23), void_rate=0.1):
    gt = (rng.random(shape) < 0.4).astype(np.uint8)
    gt[rng.random(shape) < void_rate] = VOID
    return rng.random(shape) < 0.5, gt


# --- hand-computed -------------------------------------------------------------------------


def test_intersection_union_ignores_void():
    gt = np.array([[1, 1, 0], [0, V, 1], [0, 0, 0]], dtype=np.uint8)
    pred = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    inter, union = metrics.intersection_union(pred, gt)
    assert (inter, union) == (2, 4)  # hits (0,0),(1,2); union adds (0,1),(1,0); (1,1) is void
    inter_bg, union_bg = metrics.intersection_union(~pred, gt, positive=0)
    assert (inter_bg, union_bg) == (4, 6)


def test_iou_is_one_when_both_empty():
    np.testing.assert_allclose(metrics.iou(np.array([0, 1]), np.array([0, 4])), [1.0, 0.25])


def test_class_miou_sums_per_class_then_averages():
    inter = np.array([[1.0], [3.0], [2.0]])
    union = np.array([[2.0], [4.0], [8.0]])
    value = metrics.class_miou(["a", "a", "b"], inter, union)
    np.testing.assert_allclose(value, [(4 / 6 + 2 / 8) / 2])


def test_fb_iou_is_mean_of_summed_fg_and_bg_iou():
    value = metrics.fb_iou(np.array([1, 2]), np.array([4, 4]), np.array([5, 5]), np.array([6, 9]))
    assert value == pytest.approx((3 / 8 + 10 / 15) / 2)


def test_pixel_accuracy_excludes_void():
    gt = np.array([[1, 0], [V, 0]], dtype=np.uint8)
    pred = np.array([[1, 1], [0, 0]], dtype=bool)
    assert metrics.pixel_accuracy(pred, gt) == pytest.approx(2 / 3)


def test_pointing_hit():
    gt = np.array([[0, 1], [V, 0]], dtype=np.uint8)
    assert metrics.pointing_hit((1.9, 0.2), gt)
    assert not metrics.pointing_hit((0.5, 1.5), gt)  # void
    assert not metrics.pointing_hit((2.0, 0.0), gt)  # outside the image


def test_pck_threshold_uses_longer_bbox_side():
    bbox = (10.0, 20.0, 110.0, 70.0)  # 100 x 50 -> threshold 10 at alpha 0.1
    target = np.array([[0.0, 0.0], [0.0, 0.0]])
    pred = np.array([[6.0, 8.0], [10.01, 0.0]])
    np.testing.assert_array_equal(metrics.pck_hits(pred, target, bbox, 0.1), [True, False])


def test_mask_boundary_of_a_square():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:3, 1:3] = True
    expected = np.array(
        [
            [1, 1, 1, 0, 0],  # (0,0) differs from its south-east neighbour (1,1)
            [1, 0, 1, 0, 0],  # (1,1) equals its east, south and south-east neighbours
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(metrics.mask_boundary(mask), expected)


def test_davis_j_and_f_conventions():
    empty = np.zeros((6, 6), dtype=bool)
    square = empty.copy()
    square[1:4, 1:4] = True
    assert metrics.davis_j(empty, empty) == 1.0
    assert metrics.davis_f(empty, empty) == 1.0
    assert metrics.davis_f(empty, square) == 0.0  # nothing predicted
    assert metrics.davis_f(square, empty) == 0.0  # nothing to find
    assert metrics.davis_f(square, square) == 1.0
    # A far shift matches nothing at all.
    far = np.zeros((6, 20), dtype=bool)
    far_gt = far.copy()
    far[1:4, 14:17] = True
    far_gt[1:4, 1:4] = True
    assert metrics.davis_f(far, far_gt, bound_th=2) == 0.0


def test_davis_f_hand_computed_partial_match():
    # Two single-column masks: boundaries are each mask's own column plus the column left of it.
    gt = np.zeros((4, 8), dtype=bool)
    pred = gt.copy()
    gt[:, 2] = True  # boundary: cols 1 and 2 on rows 0..2, and (3,1), (3,2) on the last row
    pred[:, 5] = True  # boundary: cols 4 and 5
    # radius 2: pred col 4 is 2 px from gt col 2 -> matched; pred col 5 is 3 px away -> not.
    # precision = 4/8; recall: gt col 2 matched (col 4 is 2 px away), gt col 1 is 3 px away -> 4/8.
    assert metrics.davis_f(pred, gt, bound_th=2) == pytest.approx(0.5)


def test_davis_object_scores_skip_first_and_last_frame():
    gt = np.zeros((3, 4, 4), dtype=np.uint8)
    gt[:, :2, :2] = 1
    pred = gt.copy()
    pred[1, 0, 0] = 0  # frame 1: J = 3/4
    pred[2] = 0  # the last frame is not scored
    j, f = metrics.davis_object_scores(pred, gt)
    assert j == pytest.approx([0.75])
    assert f[0] == pytest.approx(naive_boundary_f(pred[1] == 1, gt[1] == 1, None, 0.008))


# --- independent implementations on random cases ---------------------------------------------


def test_iou_matches_torchmetrics_binary_jaccard():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, gt = random_case(rng)
        expected = BinaryJaccardIndex(ignore_index=VOID)(torch.from_numpy(pred).long(), torch.from_numpy(gt).long())
        assert metrics.iou(*metrics.intersection_union(pred, gt)) == pytest.approx(float(expected), abs=1e-6)


def test_class_miou_and_fb_iou_match_torchmetrics_on_pooled_pixels():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "a", "c", "b", "a"]
    cases = [random_case(rng) for _ in classes]
    inter, union, inter_bg, union_bg = (np.zeros((len(cases), 1)) for _ in range(4))
    for i, (pred, gt) in enumerate(cases):
        inter[i], union[i] = metrics.intersection_union(pred, gt)
        inter_bg[i], union_bg[i] = metrics.intersection_union(~pred, gt, positive=0)

    def pooled(indices):
        return (torch.cat([torch.from_numpy(cases[i][k]).long().ravel() for i in indices]) for k in (0, 1))

    per_class = [
        float(BinaryJaccardIndex(ignore_index=VOID)(*pooled([i for i, c in enumerate(classes) if c == name])))
        for name in sorted(set(classes))
    ]
    assert metrics.class_miou(classes, inter, union)[0] == pytest.approx(np.mean(per_class), abs=1e-6)
    fb = MulticlassJaccardIndex(num_classes=2, average="macro", ignore_index=VOID)(*pooled(range(len(cases))))
    assert metrics.fb_iou(inter, union, inter_bg, union_bg)[0] == pytest.approx(float(fb), abs=1e-6)


def test_pixel_accuracy_matches_torchmetrics():
    rng = np.random.default_rng(2)
    for _ in range(10):
        pred, gt = random_case(rng)
        expected = BinaryAccuracy(ignore_index=VOID)(torch.from_numpy(pred).long(), torch.from_numpy(gt).long())
        assert metrics.pixel_accuracy(pred, gt) == pytest.approx(float(expected), abs=1e-6)


def test_batched_metrics_equal_per_layer_metrics():
    rng = np.random.default_rng(3)
    _, gt = random_case(rng)
    preds = rng.random((4, *gt.shape)) < 0.5
    inter, union = metrics.intersection_union(preds, gt)
    for layer in range(4):
        assert (inter[layer], union[layer]) == metrics.intersection_union(preds[layer], gt)
    np.testing.assert_allclose(metrics.pixel_accuracy(preds, gt), [metrics.pixel_accuracy(p, gt) for p in preds])


@pytest.mark.parametrize("bound_th", [0.008, 2, 3.5])
def test_davis_f_matches_naive_loops(bound_th):
    rng = np.random.default_rng(4)
    for _ in range(6):
        gt = np.zeros((19, 26), dtype=bool)
        pred = gt.copy()
        for mask in (gt, pred):  # a few random rectangles, so boundaries are long and near
            for _ in range(3):
                y, x = rng.integers(0, 15), rng.integers(0, 22)
                mask[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
        void = rng.random(gt.shape) < 0.05
        assert metrics.davis_f(pred, gt, void, bound_th) == pytest.approx(naive_boundary_f(pred, gt, void, bound_th))
        keep = ~void
        union = np.sum((pred | gt) & keep)
        assert metrics.davis_j(pred, gt, void) == pytest.approx(np.sum(pred & gt & keep) / union)


def naive_boundary(seg):
    """seg2bmap written pixel by pixel: a pixel is on the boundary when it differs from its east,
    south or south-east neighbour (outside the image counts as background); the last row only
    looks east, the last column only south, and the bottom-right pixel is never a boundary."""
    h, w = seg.shape

    def at(i, j):
        return bool(seg[i, j]) if i < h and j < w else False

    out = np.zeros_like(seg, dtype=bool)
    for i, j in itertools.product(range(h), range(w)):
        if i == h - 1 and j == w - 1:
            continue
        if i == h - 1:
            out[i, j] = at(i, j) != at(i, j + 1)
        elif j == w - 1:
            out[i, j] = at(i, j) != at(i + 1, j)
        else:
            out[i, j] = at(i, j) != at(i, j + 1) or at(i, j) != at(i + 1, j) or at(i, j) != at(i + 1, j + 1)
    return out


def naive_boundary_f(pred, gt, void, bound_th):
    keep = np.ones_like(gt) if void is None else ~void
    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2))
    pb, gb = naive_boundary(pred & keep), naive_boundary(gt & keep)
    pts_p, pts_g = np.argwhere(pb), np.argwhere(gb)
    if len(pts_p) == 0 or len(pts_g) == 0:
        return 1.0 if len(pts_p) == len(pts_g) else 0.0

    def matched(points, others):
        return sum(any((p[0] - o[0]) ** 2 + (p[1] - o[1]) ** 2 <= radius**2 for o in others) for p in points)

    precision = matched(pts_p, pts_g) / len(pts_p)
    recall = matched(pts_g, pts_p) / len(pts_g)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_pck_matches_naive_loop():
    rng = np.random.default_rng(5)
    for _ in range(10):
        pred, target = rng.uniform(0, 100, (2, 12, 2))
        x0, y0 = rng.uniform(0, 50, 2)
        bbox = (x0, y0, x0 + rng.uniform(5, 50), y0 + rng.uniform(5, 50))
        threshold = 0.1 * max(bbox[2] - bbox[0], bbox[3] - bbox[1])
        expected = [((p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2) ** 0.5 <= threshold for p, t in zip(pred, target)]
        np.testing.assert_array_equal(metrics.pck_hits(pred, target, bbox, 0.1), expected)
