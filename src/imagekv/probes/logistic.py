"""Batched L2-regularised binary logistic regression: one problem per layer, solved together.

Solves exactly the problem of `sklearn.linear_model.LogisticRegression(C, class_weight="balanced")`,

    min_{w, b}  C * sum_i s_i * BCE(x_i . w + b, y_i) + 0.5 * ||w||^2      (b not penalised),

with s_i = n / (2 * n_{y_i}), for L layers at once. Method: truncated Newton (Newton-CG) with
per-layer convergence masks. It is fast on CPU because every step is a handful of batched
matrix-vector products over [L, n, d] and nothing else (callers on CPU pass blocks of layers
that fit in the cache, `imagekv.probes.features.layer_blocks`, and solve those blocks
concurrently, one thread each, `solve_blocks`):
- features are centred per layer, an exact reparametrisation (the unpenalised intercept absorbs
  the mean) that removes the common direction dominating L2-normalised transformer features; the
  centring is applied inside the products, never materialised (a fresh [L, n, d] copy costs more
  than several products on CPU);
- the weights and the intercept form one vector of d + 1 (the intercept as a last column of
  ones, `_Design`), so every CG update is one operation: on CPU a fifth to a third of a fit's
  time is Python and dispatch, and two threads solving blocks at once contend for the GIL at
  every operation;
- CG is preconditioned with the Newton matrix's structure (`_Preconditioner`): its few outsized
  eigenvalues come from the clusters of support tokens, a class within an image (per-image
  offsets, the class direction, the intercept's ~n-fold curvature and its coupling to the
  weights), and enter exactly as a low-rank term; the rest as a diagonal (real LM values have a
  few channels of outsized scale). On the T1 benchmark: 4.3 CG steps per fit instead of 7.6 with
  the images' means alone, a whole fit ~40 % faster;
- CG also accumulates X @ step from its own products, so the Armijo line search runs on the
  logits alone (no extra pass over the features) and the next gradient needs one X^T product;
  the first gradient needs none (at w = 0 it follows from the classes' sums);
- each Hessian product X^T D X p reads the features from memory once: chunk by chunk of tokens
  small enough for the cache (`imagekv.probes.features.chunk_tokens`), X_k p and then X_k^T (D X_k p)
  (a layer of 3,645 x 512 float32 tokens is 7.5 MB); the mean, the clusters' sums and the column
  sums of squares share one read too;
- X_k p is computed as [chunk, d] @ [d, 1], not [1, d] @ [d, chunk]: the same product, but the
  BLAS runs the first as a matrix-vector product at memory speed and the second ~2x slower
  (Zen 4, MKL; the whole T1 solve ~25 % less CPU).
(A strided subsampled Hessian was tried and rejected: it multiplied the Newton steps.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imagekv.probes.features import chunk_tokens


# CG stops at residual FORCING * |g|. On the T1 benchmark 0.1, 0.15 and 0.2 take the same time
# (0.2: 7 % fewer passes over the features, 4 % more Newton steps, each with its line search).
FORCING = 0.1


@dataclass
class LogisticFit:
    weight: torch.Tensor  # [L, d]
    bias: torch.Tensor  # [L]
    iterations: int  # gradient evaluations of the slowest layer (Newton steps + 1 when converged)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[L, m] logits of features [L, m, d]."""
        return torch.bmm(features, self.weight[:, None, :].mT).squeeze(2) + self.bias[:, None]  # fast layout, see top


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """sklearn's class_weight="balanced": n / (n_classes * count of the sample's class)."""
    positives = labels.sum()
    counts = torch.where(labels > 0.5, positives, labels.numel() - positives)
    return labels.numel() / (2.0 * counts)


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    C: float = 1.0,
    tol: float = 1e-4,
    max_newton: int = 50,
    max_cg: int = 50,
    groups: Sequence[int] | None = None,
) -> LogisticFit:
    """Fit one balanced logistic regression per layer: features [L, n, d], labels [n] in {0, 1}.
    `groups`: the numbers of tokens of consecutive groups (the images they come from), if known;
    they only speed up the solve (the preconditioner), never change the solution.

    Stops a layer when max |gradient| <= tol * C * sum(s) — sklearn's `gtol` criterion on its
    sample-weight-normalised objective; the default tol=1e-4 is sklearn's default too.
    Both classes must be present.
    """
    num_layers, n, dim = features.shape
    y = labels.to(features.dtype)
    if not 0 < float(y.sum()) < n:
        raise ValueError("logistic regression needs both classes among the training tokens")
    sample_scale = C * balanced_weights(y)  # [n]
    sizes = [n] if groups is None else [size for size in groups if size > 0]
    if sum(sizes) != n:
        raise ValueError(f"logistic regression: groups of {sum(sizes)} tokens for {n} tokens")
    A = _Design(features, y, sizes)
    tolerance = tol * float(sample_scale.sum())  # sklearn divides its objective by this sum

    theta = features.new_zeros(num_layers, dim + 1)  # [w, intercept of the centred problem]
    y64, scale64 = y.double(), sample_scale.double()  # for the line search, in float64
    z = features.new_zeros(num_layers, n)  # A theta
    active = torch.ones(num_layers, dtype=torch.bool, device=features.device)
    for iteration in range(1, max_newton + 1):
        probability = torch.sigmoid(z)
        residual = sample_scale * (probability - y)  # d loss / d z, [L, n]
        # at w = 0 the residual is constant within each class: the first gradient from the classes' sums
        grad = A.class_t_times(residual[0, y.argmin()], residual[0, y.argmax()]) if iteration == 1 else A.t_times(residual)
        grad.addcmul_(A.penalised, theta)  # the penalty's gradient (not on the intercept)
        active &= grad.abs().amax(dim=1) > tolerance
        if not active.any():
            break
        curvature = sample_scale * probability * (1.0 - probability)  # [L, n]
        step, step_z = _conjugate_gradient(A, curvature, grad, _Preconditioner(A, curvature), active, FORCING, max_cg)
        t = torch.where(active, _armijo_step(z, theta, step_z, step, grad, y64, scale64), 0.0)[:, None]
        theta.addcmul_(t, step)
        z.addcmul_(t, step_z)
    else:
        unconverged = int(active.sum())
        warnings.warn(f"logistic regression: {unconverged} layer(s) not converged in max_newton={max_newton} steps")
    w = theta[:, :dim]
    return LogisticFit(weight=w, bias=theta[:, dim] - (A.mean * w).sum(dim=1), iterations=iteration)


class _Design:
    """Products with the design matrix of the centred problem, A = [X - mean, 1] ([L, n, d + 1]
    per layer: the unpenalised intercept as a last column), without forming it."""

    def __init__(self, features: torch.Tensor, y: torch.Tensor, sizes: Sequence[int]):
        """Also computes, in one read of the features, the sums of the features of each cluster
        of tokens, a class (`y`) within a group of consecutive tokens (`sizes`), and their column
        sums of squares: the mean, the preconditioner's low-rank part and diagonal, and A^T r for
        an r constant within each class (the first gradient, `class_t_times`)."""
        self.features = features  # [L, n, d]
        num_layers, n, dim = features.shape
        # Sums over the tokens as products with a row of ones: on CPU a reduction over a non-last
        # dimension runs well below a product's speed (mean 1.5x, square().sum 2-4x slower).
        ones = features.new_ones(num_layers, 1, n)
        positive = y.expand(num_layers, 1, n)
        squares = features.new_zeros(num_layers, 1, dim)
        sums, positive_sums = (features.new_zeros(num_layers, len(sizes), dim) for _ in range(2))
        # Chunk by chunk of tokens (the chunk and its square in the cache) within each group,
        # squared into one small buffer (a fresh [L, n, d] copy costs page faults).
        step = chunk_tokens(n, 2 * num_layers * dim * features.element_size())
        buffer = features.new_empty(num_layers, min(n, step), dim)
        group_start = 0
        for group, group_size in enumerate(sizes):
            for start in range(group_start, group_start + group_size, step):
                chunk = features[:, start : min(start + step, group_start + group_size)]
                size = chunk.shape[1]
                sums[:, group : group + 1].baddbmm_(ones[:, :, :size], chunk)
                positive_sums[:, group : group + 1].baddbmm_(positive[:, :, start : start + size], chunk)
                squares.baddbmm_(ones[:, :, :size], torch.mul(chunk, chunk, out=buffer[:, :size]))
            group_start += group_size
        self.dim = dim
        self.penalised = torch.cat([features.new_ones(dim), features.new_zeros(1)])  # 1 on w, 0 on the intercept
        self.positive_sum, self.total_sum = positive_sums.sum(1), sums.sum(1)  # [L, d]
        self.mean = self.total_sum / n
        # Clusters: the negative and the positive tokens of each group, the non-empty ones
        membership = torch.block_diag(*[torch.stack([1.0 - part, part], 1) for part in y.split(list(sizes))])  # [n, 2K]
        cluster_sums = torch.stack([sums - positive_sums, positive_sums], 2).flatten(1, 2)  # [L, 2K, d]
        counts = membership.sum(0)
        if not bool((counts > 0).all()):
            nonempty = counts > 0
            membership, cluster_sums, counts = membership[:, nonempty], cluster_sums[:, nonempty], counts[nonempty]
        self.membership = membership
        cluster_means = cluster_sums / counts[None, :, None]
        # The clusters' mean rows of A: their centred means, and 1 on the intercept, [L, C, d + 1]
        self.cluster_means = F.pad(cluster_means - self.mean[:, None], (0, 1), value=1.0)
        # Per-feature sum of squares of the centred features about their cluster's mean, for the
        # diagonal of the preconditioner, [L, d]; the subtraction can round below zero.
        between = (counts[None, :, None] * cluster_means.square()).sum(1)
        self.within_sq = (squares.squeeze(1) - between).clamp_min(0.0)
        self.positive_count = float(y.sum())
        self._chunk = chunk_tokens(n, num_layers * dim * features.element_size())

    def _stack(self, x_t_r: torch.Tensor, r_sums: torch.Tensor) -> torch.Tensor:
        """A^T r from X^T r [L, d] and sum(r) [L, 1]."""
        return torch.cat([x_t_r - self.mean * r_sums, r_sums], dim=1)

    def class_t_times(self, negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """A^T r for r equal to `negative` on every negative token and `positive` on every positive
        one (scalars): from the classes' sums, without a read of the features."""
        negatives = self.features.shape[1] - self.positive_count
        x_t_r = positive * self.positive_sum + negative * (self.total_sum - self.positive_sum)
        return self._stack(x_t_r, (positive * self.positive_count + negative * negatives).expand(len(x_t_r), 1))

    def t_times(self, r: torch.Tensor) -> torch.Tensor:
        """A^T r: [L, n] -> [L, d + 1]."""
        return self._stack(torch.bmm(r[:, None, :], self.features).squeeze(1), r.sum(1, keepdim=True))

    def curvature_times(self, v: torch.Tensor, curvature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A v and A^T (curvature * A v): [L, d + 1], [L, n] -> ([L, n], [L, d + 1]). One read of
        the features from memory: chunk by chunk of tokens (`chunk_tokens`), the second product
        reads the chunk from the cache."""
        num_layers, n, dim = self.features.shape
        z = torch.empty_like(curvature)
        weighted = torch.empty_like(curvature)
        out = self.features.new_zeros(num_layers, 1, dim)
        w = v[:, :dim]
        offset = (v[:, dim] - (self.mean * w).sum(1))[:, None, None]  # [L, 1, 1]
        column = w[:, None, :].mT  # [L, d, 1]: the fast layout, see top
        for start in range(0, n, self._chunk):
            stop = min(start + self._chunk, n)
            rows = self.features[:, start:stop]
            z_chunk = torch.baddbmm(offset, rows, column).mT  # [L, 1, chunk]
            z[:, start:stop] = z_chunk.squeeze(1)
            d_chunk = torch.mul(z_chunk, curvature[:, None, start:stop])
            weighted[:, start:stop] = d_chunk.squeeze(1)
            out.baddbmm_(d_chunk, rows)
        return z, self._stack(out.squeeze(1), weighted.sum(1, keepdim=True))


class _Preconditioner:
    """An approximate inverse of the Newton system's matrix H = A^T D A + diag(1, ..., 1, 0) (see
    _conjugate_gradient), cheap to apply. With a_i = m_k(i) + e_i, m_k the mean row of A over
    token i's cluster k (a class within a group: its centred mean, and 1 on the intercept),
    A^T D A = sum_k c_k m_k m_k^T + sum_i D_i e_i e_i^T + cross terms, c_k the sum of D over
    cluster k; the cross terms vanish where D is constant within clusters (exactly at w = 0,
    where D depends on the class alone). The preconditioner keeps the clusters' part exactly
    (the outsized eigenvalues) and the diagonal of the rest plus the penalty,
    1 + mean(D) * each feature's sum of squares about its cluster's mean (1 on the intercept,
    whose within-cluster part is 0). Applied with the Woodbury identity: a [C, C] Cholesky
    factor per layer and two [C, d + 1] products per CG step. On the T1 benchmark the
    preconditioned spectrum spans [0.75, 1.36] (with the groups' means alone, intercept apart:
    [0.49, 1.52]).
    """

    def __init__(self, A: _Design, curvature: torch.Tensor):
        weights = 1.0 / (1.0 + curvature.mean(1, keepdim=True) * A.within_sq)  # [L, d]
        self.inverse_diagonal = torch.cat([weights, torch.ones_like(weights[:, :1])], dim=1)
        self.means = A.cluster_means
        cluster_curvature = torch.mm(curvature, A.membership)  # [L, C]
        scaled = self.means * self.inverse_diagonal[:, None]  # [L, C, d + 1]
        capacitance = torch.bmm(scaled, self.means.mT) + torch.diag_embed(1.0 / cluster_curvature.clamp_min(1e-12))
        self.factor = torch.linalg.cholesky(capacitance)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        s = self.inverse_diagonal * r
        coefficients = torch.cholesky_solve(torch.bmm(self.means, s[:, :, None]), self.factor)
        return s.sub_(self.inverse_diagonal * torch.bmm(self.means.mT, coefficients).squeeze(2))


def _conjugate_gradient(A: _Design, curvature, grad, precondition: _Preconditioner, active, forcing: float, max_cg: int):
    """Approximately solve H step = -grad per layer, H = A^T D A + diag(1, ..., 1, 0) with
    D = diag(curvature); also return A step. CG stops at a residual of forcing * |grad| on every
    still active layer: inexact steps, a few more of them, fewer passes over the features in all.
    """
    r = -grad
    x, x_z = torch.zeros_like(grad), torch.zeros_like(curvature)
    p = precondition(r)
    rho = torch.linalg.vecdot(r, p)
    target = forcing * torch.linalg.vector_norm(r, dim=1)
    for _ in range(max_cg):
        p_z, hp = A.curvature_times(p, curvature)
        hp.addcmul_(A.penalised, p)
        alpha = (rho / torch.linalg.vecdot(p, hp).clamp_min(1e-30))[:, None]
        x.addcmul_(alpha, p)
        x_z.addcmul_(alpha, p_z)
        r.addcmul_(alpha, hp, value=-1.0)
        if bool(((torch.linalg.vector_norm(r, dim=1) <= target) | ~active).all()):
            break
        s = precondition(r)
        rho_next = torch.linalg.vecdot(r, s)
        p = s.addcmul_((rho_next / rho.clamp_min(1e-30))[:, None], p)
        rho = rho_next
    return x, x_z


def _armijo_step(z, theta, step_z, step, grad, y, sample_scale, halvings: int = 20):
    """Largest t in {1, 1/2, ...} with sufficient decrease, per layer. The objective is a function
    of the logits and w only, so every trial costs O(n) without touching the features; the full
    ladder is only evaluated when the Newton step t = 1 fails somewhere. Float64 (`y` and
    `sample_scale` come as float64), and the decrease computed as such, not as a difference of two
    objectives: near the optimum it falls below float32 resolution of the objective, and a
    rounding-error "failure" would stall the layer on ever smaller steps."""
    dim = theta.shape[1] - 1
    z, step_z = z.double(), step_z.double()
    w, step_w = theta[:, :dim].double(), step[:, :dim].double()
    slope = torch.linalg.vecdot(grad, step).double()[:, None]  # [L, 1]
    t = z.new_ones(1)
    terms = (z, step_z, F.softplus(z), w, step_w, y, sample_scale)
    if bool((_decrease(t, *terms) <= 1e-4 * t * slope).all()):
        return torch.ones_like(grad[:, 0])
    t = 0.5 ** torch.arange(halvings, dtype=z.dtype, device=z.device)  # [T]
    ok = _decrease(t, *terms) <= 1e-4 * t * slope  # [L, T]
    smallest = torch.full_like(slope[:, 0], halvings - 1, dtype=torch.long)
    first_ok = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), smallest)
    return t[first_ok].to(grad.dtype)


def _decrease(t, z, step_z, softplus_z, w, step_w, y, sample_scale) -> torch.Tensor:
    """Objective at (z, w) + t (step_z, step_w) minus at (z, w), [L, T] for t [T]: the balanced
    binary cross-entropy sum(s * (softplus(z) - y z)) plus the penalty 0.5 |w|^2."""
    moved = t[:, None] * step_z[:, None, :]  # [L, T, n]
    logistic = (sample_scale * (F.softplus(z[:, None, :] + moved) - softplus_z[:, None, :] - y * moved)).sum(-1)
    penalty = t * torch.linalg.vecdot(w, step_w)[:, None] + 0.5 * t.square() * step_w.square().sum(-1, keepdim=True)
    return logistic + penalty
