"""T1 few-shot foreground segmentation (Pascal-5i): a linear classifier per (episode, layer).

Per episode, the L2-normalised tokens of the support images, labelled foreground when at least
`label_threshold` of their non-void pixels are, train one balanced logistic regression per layer
(all layers of a cache-sized block at once, blocks concurrently, `imagekv.probes.logistic`); the query's token
probabilities are bilinearly upsampled to pixels and thresholded. Scores: the standard few-shot
mIoU per fold (per class, intersections and unions summed over its episodes, then averaged over
the fold's classes) and FB-IoU, each also averaged over the folds present.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from imagekv.datasets.schema import SegEpisode
from imagekv.probes import FeatureSource, metric_rows
from imagekv.probes.features import (
    keep_tokens,
    kept_tokens,
    layer_blocks,
    normalized_stack,
    probe_device,
    solve_blocks,
    to_pixels,
    token_labels,
    token_rows,
)
from imagekv.probes.logistic import fit_logistic
from imagekv.probes.metrics import class_miou, fb_iou, intersection_union

DEFAULTS = {
    "C": 1.0,  # inverse L2 strength, as sklearn LogisticRegression(C=1.0, class_weight="balanced")
    "label_threshold": 0.5,  # a token is foreground when this fraction of its pixels is
    "drop_ambiguous": False,  # leave out support tokens with coverage in (0.25, 0.75)
    "threshold": 0.5,  # on the upsampled query probabilities
    # Solver stop: max |gradient| <= tol * C * sum of sample weights, sklearn's criterion at its
    # default. 1e-5 moved no layer's mIoU by more than 0.001 on the T1 benchmark (sklearn's own
    # stopping error is larger) and cost ~20 % more CPU.
    "tol": 1e-4,
    "max_newton": 50,
    "max_cg": 50,
}
AMBIGUOUS_BAND = (0.25, 0.75)


def score(episode: SegEpisode, source: FeatureSource, params: dict) -> tuple[int, str, np.ndarray]:
    return episode.fold, episode.class_name, episode_counts(episode, source, params)


def summarize(scores: Sequence[tuple[int, str, np.ndarray]], layers: Sequence[int], params: dict) -> list[dict]:
    per_fold: dict[int, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for fold, class_name, counts in scores:
        per_fold[fold].append((class_name, counts))
    if not per_fold:
        raise ValueError("fewshot_seg: no episodes")
    rows, fold_miou, fold_fbiou = [], [], []
    for fold, records in sorted(per_fold.items()):
        classes = [name for name, _ in records]
        counts = np.stack([c for _, c in records])  # [E, 4, L]
        miou = class_miou(classes, counts[:, 0], counts[:, 1])
        fbiou = fb_iou(counts[:, 0], counts[:, 1], counts[:, 2], counts[:, 3])
        rows += metric_rows(layers, f"miou/fold={fold}", miou, len(records))
        rows += metric_rows(layers, f"fbiou/fold={fold}", fbiou, len(records))
        fold_miou.append(miou)
        fold_fbiou.append(fbiou)
    episodes = sum(len(r) for r in per_fold.values())
    rows += metric_rows(layers, "miou", np.mean(fold_miou, axis=0), episodes)
    rows += metric_rows(layers, "fbiou", np.mean(fold_fbiou, axis=0), episodes)
    return rows


def episode_counts(episode: SegEpisode, source: FeatureSource, params: dict) -> np.ndarray:
    """[4, L] pixel counts of the query prediction per layer: foreground intersection and union,
    background intersection and union (void excluded)."""
    probabilities = query_probabilities(episode, source, params)
    grid = source.grid(episode.query)
    pred = to_pixels(probabilities, grid) >= params["threshold"]
    inter_fg, union_fg = intersection_union(pred, episode.query_mask, positive=1)
    inter_bg, union_bg = intersection_union(~pred, episode.query_mask, positive=0)
    return np.stack([inter_fg, union_fg, inter_bg, union_bg])


def query_probabilities(episode: SegEpisode, source: FeatureSource, params: dict) -> torch.Tensor:
    """[L, query tokens] foreground probability of each query token, per layer."""
    support, labels = support_rows(episode, source, params)
    query = token_rows(source, [episode.query])
    num_layers, num_query = query[0].shape[:2]
    if labels.min() == labels.max():  # one class only: nothing to fit, predict it everywhere
        probabilities = torch.full((num_layers, num_query), float(labels[0]), device=labels.device)
    else:
        probabilities = torch.empty(num_layers, num_query, device=labels.device)
        float32_bytes_per_layer = labels.numel() * query[0].shape[-1] * 4

        def solve(layers: slice) -> None:
            fit = fit_logistic(
                normalized_stack(support, layers), labels,
                C=params["C"], tol=params["tol"], max_newton=params["max_newton"], max_cg=params["max_cg"],
                groups=[shot.shape[1] for shot in support],
            )
            probabilities[layers] = torch.sigmoid(fit.logits(normalized_stack(query, layers)))

        solve_blocks(solve, layer_blocks(num_layers, float32_bytes_per_layer))
    probabilities[:, ~kept_tokens(source, episode.query)] = 0.0  # excluded tokens: background
    return probabilities


def support_tokens(episode: SegEpisode, source: FeatureSource, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """What the classifiers train on: features [L, n, C] of the usable support tokens of all
    shots, L2-normalised, and their labels [n]."""
    support, labels = support_rows(episode, source, params)
    return normalized_stack(support), labels


def support_rows(episode: SegEpisode, source: FeatureSource, params: dict) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The usable support tokens of each shot as stored (`token_rows`), and their labels [n]."""
    ambiguous = AMBIGUOUS_BAND if params["drop_ambiguous"] else None
    labelled = [
        token_labels(mask, source.grid(image_id), params["label_threshold"], ambiguous)
        for image_id, mask in zip(episode.support, episode.support_masks, strict=True)
    ]
    usable = [keep_tokens(source, image_id, keep) for image_id, (_, keep) in zip(episode.support, labelled)]
    if not any(keep.any() for keep in usable):
        raise ValueError(f"episode {episode.episode_id}: every support token is void or excluded")
    rows = token_rows(source, episode.support, usable)
    labels = torch.from_numpy(np.concatenate([label[keep] for (label, _), keep in zip(labelled, usable)]))
    return rows, labels.to(probe_device())
