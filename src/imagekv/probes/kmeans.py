"""Batched k-means: one independent clustering per layer, all layers in one torch computation."""

from __future__ import annotations

import torch


def kmeans(
    points: torch.Tensor, k: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0
) -> torch.Tensor:
    """Cluster points [L, N, C] into k clusters per layer; returns labels [L, N].

    Lloyd iterations from k-means++ seeds, restarted `n_init` times with one seeded generator; per
    layer the run with the lowest inertia wins. A layer stops when no centre moves by more than
    `tol` times the mean per-feature variance (sklearn's relative tolerance).
    """
    generator = torch.Generator(device=points.device).manual_seed(seed)
    threshold = tol * points.var(dim=1).mean(dim=1)  # [L]
    best_labels, best_inertia = None, None
    for _ in range(n_init):
        centres = _kmeans_plus_plus(points, k, generator)
        labels, inertia = _lloyd(points, centres, max_iter, threshold)
        if best_labels is None:
            best_labels, best_inertia = labels, inertia
        else:
            better = inertia < best_inertia
            best_labels = torch.where(better[:, None], labels, best_labels)
            best_inertia = torch.minimum(inertia, best_inertia)
    return best_labels


def _sq_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[L, N, K] squared Euclidean distances."""
    cross = torch.bmm(points, centres.transpose(1, 2))
    return (points.square().sum(-1, keepdim=True) - 2 * cross + centres.square().sum(-1)[:, None, :]).clamp_min(0)


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    num_layers, n, _ = points.shape
    layer_index = torch.arange(num_layers, device=points.device)
    first = torch.randint(n, (num_layers,), generator=generator, device=points.device)
    centres = [points[layer_index, first]]
    closest = _sq_distances(points, centres[0][:, None, :]).squeeze(-1)
    for _ in range(1, k):
        weights = closest + 1e-12  # all-duplicate points still give a valid distribution
        chosen = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        centres.append(points[layer_index, chosen])
        closest = torch.minimum(closest, _sq_distances(points, centres[-1][:, None, :]).squeeze(-1))
    return torch.stack(centres, dim=1)


def _lloyd(points, centres, max_iter: int, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = centres.shape[1]
    active = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
    for _ in range(max_iter):
        labels = _sq_distances(points, centres).argmin(-1)
        one_hot = torch.nn.functional.one_hot(labels, k).to(points.dtype)  # [L, N, K]
        counts = one_hot.sum(1)  # [L, K]
        sums = torch.bmm(one_hot.transpose(1, 2), points)
        # An emptied cluster keeps its old centre rather than collapsing to the origin.
        updated = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centres)
        shift = (updated - centres).square().sum(-1).amax(-1)
        centres = torch.where(active[:, None, None], updated, centres)
        active &= shift > threshold
        if not active.any():
            break
    distances = _sq_distances(points, centres)
    labels = distances.argmin(-1)
    return labels, distances.gather(-1, labels[..., None]).sum((1, 2))
