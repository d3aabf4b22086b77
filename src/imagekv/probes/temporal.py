"""T6 temporal correspondence (DAVIS-2017): label propagation along a video, per layer.

The recipe of DINO's video-segmentation evaluation: the first frame's ground truth, downsampled
to the token grid as soft labels (fraction of each cell per label), is carried forward frame by
frame. Each token of frame t takes the softmax(similarity / temperature)-weighted labels of its
top-k most similar tokens among the first frame and the n previous frames, restricted to a
(2r+1) x (2r+1)-token window around its own position; the propagated soft labels are stored for
the next frames, bilinearly upsampled and arg-maxed. Scores: DAVIS J and F per object (official
definitions), their means over all objects, and J&F = (J + F) / 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from imagekv.datasets.schema import VideoClip
from imagekv.grid import TokenGrid
from imagekv.probes import FeatureSource, metric_rows
from imagekv.probes.features import kept_tokens, soft_token_labels, to_pixels, token_features
from imagekv.probes.metrics import davis_eval_frames, davis_frame_scores, davis_objects

DEFAULTS = {
    "n_previous": 7,  # previous frames in the context, besides the first frame
    "radius": 12,  # spatial window half-size, in tokens
    "topk": 5,
    "temperature": 0.7,
    "bound_th": 0.008,  # DAVIS boundary tolerance, fraction of the image diagonal
}
AFFINITY_BUDGET = 2**24  # affinity entries per layer chunk, keeps memory near 64 MB


def summarize(scores: Sequence[tuple[np.ndarray, np.ndarray]], layers: Sequence[int], params: dict) -> list[dict]:
    """`scores`: each clip's `clip_scores`."""
    j_scores = [j for j, _ in scores]  # [L, K] each
    f_scores = [f for _, f in scores]
    if not j_scores:
        raise ValueError("temporal_corr: no video clips")
    j_mean = np.concatenate(j_scores, axis=1).mean(1)
    f_mean = np.concatenate(f_scores, axis=1).mean(1)
    objects = sum(j.shape[1] for j in j_scores)
    return (
        metric_rows(layers, "j", j_mean, objects)
        + metric_rows(layers, "f", f_mean, objects)
        + metric_rows(layers, "j&f", (j_mean + f_mean) / 2, objects)
    )


def clip_scores(clip: VideoClip, source: FeatureSource, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per layer and object of the clip, the mean J and mean F over the scored frames: [L, K]."""
    if len(clip.frame_ids) < 2:
        raise ValueError(f"clip {clip.clip_id}: label propagation needs at least two frames")
    num_objects = davis_objects(clip.label_maps[0])
    scored = davis_eval_frames(len(clip.frame_ids))
    per_frame = []
    for t, labels in enumerate(propagate(clip, source, params, num_objects + 1), start=1):
        per_frame.append(davis_frame_scores(labels, clip.label_maps[t], num_objects, params["bound_th"]))
        if t == scored[-1]:  # the unscored last frame need not be propagated
            break
    return np.mean([j for j, _ in per_frame], axis=0), np.mean([f for _, f in per_frame], axis=0)


def propagate(clip: VideoClip, source: FeatureSource, params: dict, num_labels: int) -> Iterable[np.ndarray]:
    """Yield, frame by frame (from frame 1), the predicted label map [L, H, W] of every layer."""
    grid = source.grid(clip.frame_ids[0])
    first_features = token_features(source, clip.frame_ids[0])  # [L, T, C]
    first_labels = torch.from_numpy(soft_token_labels(clip.label_maps[0], grid, num_labels)).to(first_features.device)
    first_labels = first_labels.expand(first_features.shape[0], -1, -1)  # [L, T, labels]
    window = neighbourhood(grid, params["radius"]).to(first_features.device)
    first = (first_features, first_labels, kept_tokens(source, clip.frame_ids[0]))
    previous: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # the last n_previous frames
    for frame_id in clip.frame_ids[1:]:
        if (frame_grid := source.grid(frame_id)) != grid:
            raise ValueError(f"clip {clip.clip_id}: frame {frame_id} has grid {frame_grid}, frame 0 has {grid}")
        features = token_features(source, frame_id)
        keep = kept_tokens(source, frame_id)
        labels = propagate_frame(features, [first, *previous], window, params)
        labels[:, ~keep] = torch.nn.functional.one_hot(torch.tensor(0), labels.shape[-1]).to(labels)  # background
        previous.append((features, labels, keep))
        previous = previous[max(len(previous) - params["n_previous"], 0):]
        yield np.stack([to_pixels(layer.T, grid).argmax(0) for layer in labels])


def propagate_frame(
    features: torch.Tensor, context: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], window: torch.Tensor,
    params: dict,
) -> torch.Tensor:
    """Soft labels [L, T, labels] of one frame from the context frames' (features, labels, kept
    tokens). A token with fewer than top-k candidates in its window uses those it has; with none,
    it gets no label mass (arg-max: background)."""
    context_features = torch.cat([f for f, _, _ in context], dim=1)  # [L, M, C]
    context_labels = torch.cat([lab for _, lab, _ in context], dim=1)  # [L, M, labels]
    allowed = torch.cat([window & keep[None, :] for _, _, keep in context], dim=1)  # [T, M]
    topk = min(params["topk"], int(allowed.sum(1).max()))
    chunk = max(1, AFFINITY_BUDGET // allowed.numel())
    out = []
    for start in range(0, features.shape[0], chunk):
        part = slice(start, start + chunk)
        affinity = torch.bmm(features[part], context_features[part].transpose(1, 2)) / params["temperature"]
        affinity = affinity.masked_fill(~allowed, float("-inf"))
        values, index = affinity.topk(topk, dim=-1)  # [l, T, k]
        weights = torch.softmax(values, dim=-1).nan_to_num(0.0)  # NaN: a row without candidates
        gathered = torch.stack([labels[idx] for labels, idx in zip(context_labels[part], index)])  # [l, T, k, labels]
        out.append((weights[..., None] * gathered).sum(2))
    return torch.cat(out)


def neighbourhood(grid: TokenGrid, radius: int) -> torch.Tensor:
    """[T, T] bool: token pairs at most `radius` rows and columns apart (a square window)."""
    rows = torch.arange(grid.rows).repeat_interleave(grid.cols)
    cols = torch.arange(grid.cols).repeat(grid.rows)
    return ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
