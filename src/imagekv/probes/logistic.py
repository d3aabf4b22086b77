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
- CG is Jacobi-preconditioned: exactly on the intercept, whose curvature is ~n times the others',
  and with the mean curvature times each centred feature's sum of squares on the weights (real
  LM values have a few channels of outsized scale; there it saves ~30 % of the products);
- CG also accumulates X @ step from its own products, so the Armijo line search runs on the
  logits alone (no extra pass over the features) and the next gradient needs one X^T product;
- each Hessian product X^T D X p reads the features from memory once: chunk by chunk of tokens
  small enough for the cache (`imagekv.probes.features.chunk_tokens`), X_k p and then X_k^T (D X_k p)
  (a layer of 3,645 x 512 float32 tokens is 7 MB, most of an 8 MB last-level cache); the mean,
  the preconditioner's column sums of squares and the first gradient share one read too;
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


# CG stops at residual FORCING * |g|. On the T1 benchmark 0.1 needs 8 % fewer passes over the
# features than 0.5 and a quarter fewer Newton steps (each with its line search); 0.05-0.3 about the same.
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
    X = _Centred(features, sample_scale * (0.5 - y), sizes)  # the residual at w = 0, sigmoid(0) = 1/2
    tolerance = tol * float(sample_scale.sum())  # sklearn divides its objective by this sum

    w = features.new_zeros(num_layers, dim)
    c = features.new_zeros(num_layers)  # intercept of the centred problem
    z = features.new_zeros(num_layers, n)
    active = torch.ones(num_layers, dtype=torch.bool, device=features.device)
    for iteration in range(1, max_newton + 1):
        residual = sample_scale * (torch.sigmoid(z) - y)  # d loss / d z, [L, n]
        grad_w = (X.first_t_times if iteration == 1 else X.t_times(residual)) + w
        grad_c = residual.sum(dim=1)
        grad_norm = torch.maximum(grad_w.abs().amax(dim=1), grad_c.abs())
        active &= grad_norm > tolerance
        if not active.any():
            break
        curvature = sample_scale * torch.sigmoid(z) * torch.sigmoid(-z)  # [L, n]
        step_w, step_c, step_z = _conjugate_gradient(
            X, curvature, grad_w, grad_c, _Preconditioner(X, curvature), active, FORCING, max_cg
        )
        t = _armijo_step(z, y, sample_scale, w, step_z, step_w, grad_w, grad_c, step_c)
        t = torch.where(active, t, torch.zeros_like(t))
        w = w + t[:, None] * step_w
        c = c + t * step_c
        z = z + t[:, None] * step_z
    else:
        unconverged = int(active.sum())
        warnings.warn(f"logistic regression: {unconverged} layer(s) not converged in max_newton={max_newton} steps")
    bias = c - (X.mean * w).sum(dim=1)
    return LogisticFit(weight=w, bias=bias, iterations=iteration)


class _Centred:
    """Products with the per-layer centred features X - mean, without forming them."""

    def __init__(self, features: torch.Tensor, residual: torch.Tensor, sizes: Sequence[int]):
        """Also computes (X - mean)^T residual ([n], the same for every layer), the first
        gradient, and the mean of each group of consecutive tokens (`sizes`), in the same read of
        the features as the mean and the column sums of squares."""
        self.features = features  # [L, n, d]
        num_layers, n, dim = features.shape
        # Sums over the tokens as products with a row of ones: on CPU a reduction over a non-last
        # dimension runs well below a product's speed (mean 1.5x, square().sum 2-4x slower).
        ones = features.new_ones(num_layers, 1, n)
        rows = residual.expand(num_layers, 1, n)
        squares, product = (features.new_zeros(num_layers, 1, dim) for _ in range(2))
        sums = features.new_zeros(num_layers, len(sizes), dim)
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
                product.baddbmm_(rows[:, :, start : start + size], chunk)
                squares.baddbmm_(ones[:, :, :size], torch.mul(chunk, chunk, out=buffer[:, :size]))
            group_start += group_size
        self.sizes = list(sizes)
        counts = features.new_tensor(self.sizes)[None, :, None]
        self.mean = sums.sum(1) / n  # [L, d]
        self.group_means = sums / counts - self.mean[:, None]  # [L, K, d], centred
        # Per-feature sum of squares of the centred features about their group's mean, for the
        # diagonal of the preconditioner, [L, d]; the subtraction can round below zero.
        between = (counts * (sums / counts).square()).sum(1)
        self.within_sq = (squares.squeeze(1) - between).clamp_min(0.0)
        self.first_t_times = product.squeeze(1) - self.mean * residual.sum()

    def t_times(self, r: torch.Tensor) -> torch.Tensor:
        """(X - mean)^T r: [L, n] -> [L, d]."""
        return torch.bmm(r[:, None, :], self.features).squeeze(1) - self.mean * r.sum(1, keepdim=True)

    def curvature_times(self, v: torch.Tensor, shift: torch.Tensor, curvature: torch.Tensor):
        """z = (X - mean) v + shift and (X - mean)^T (curvature * z): [L, d], [L], [L, n] ->
        ([L, n], [L, d], [L, n] curvature * z). One read of the features from memory: chunk by
        chunk of tokens (`chunk_tokens`), the second product reads the chunk from the cache."""
        num_layers, n, dim = self.features.shape
        z = torch.empty_like(curvature)
        weighted = torch.empty_like(curvature)
        out = self.features.new_zeros(num_layers, 1, dim)
        offset = (shift - (self.mean * v).sum(1))[:, None, None]  # [L, 1, 1]
        step = chunk_tokens(n, num_layers * dim * self.features.element_size())
        column = v[:, None, :].mT  # [L, d, 1]
        for start in range(0, n, step):
            rows = self.features[:, start : start + step]
            z_chunk = torch.baddbmm(offset, rows, column).mT  # [L, 1, chunk]
            z[:, start : start + step] = z_chunk.squeeze(1)
            d_chunk = torch.mul(z_chunk, curvature[:, None, start : start + step])
            weighted[:, start : start + step] = d_chunk.squeeze(1)
            out.baddbmm_(d_chunk, rows)
        return z, out.squeeze(1) - self.mean * weighted.sum(1, keepdim=True), weighted


class _Preconditioner:
    """An approximate inverse of the Newton system's matrix H (see _conjugate_gradient), cheap to
    apply. On the intercept, exactly its curvature 1^T D 1 (~n times the others'). On the weights,
    X^T D X + I taken as the groups' part, sum_k (sum of D over group k) m_k m_k^T with m_k the
    group's centred mean, plus the diagonal of the rest, 1 + mean(D) * the column sums of squares
    about the group means: a Jacobi preconditioner with the means of the support images, the
    directions of the few outsized eigenvalues of H (per-image offsets), exact. Applied with the
    Woodbury identity: a [K, K] Cholesky factor per layer and two [K, d] products per CG step.
    Measured on the T1 benchmark: ~2x fewer CG steps than Jacobi alone (real LM values have a few
    channels of outsized scale, which the diagonal still takes).
    """

    def __init__(self, X: _Centred, curvature: torch.Tensor):
        self.inverse_c = 1.0 / curvature.sum(dim=1).clamp_min(1e-12)
        self.inverse_diagonal = 1.0 / (1.0 + curvature.mean(1, keepdim=True) * X.within_sq)  # [L, d]
        self.means = X.group_means if len(X.sizes) > 1 else None
        if self.means is not None:
            group_curvature = torch.stack([part.sum(1) for part in curvature.split(X.sizes, dim=1)], 1)
            scaled = self.means * self.inverse_diagonal[:, None]  # [L, K, d]
            capacitance = torch.bmm(scaled, self.means.mT) + torch.diag_embed(1.0 / group_curvature.clamp_min(1e-12))
            self.factor = torch.linalg.cholesky(capacitance)

    def __call__(self, r_w: torch.Tensor, r_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_w = self.inverse_diagonal * r_w
        if self.means is not None:
            coefficients = torch.cholesky_solve(torch.bmm(self.means, s_w[:, :, None]), self.factor)
            s_w = s_w - self.inverse_diagonal * torch.bmm(self.means.mT, coefficients).squeeze(2)
        return s_w, self.inverse_c * r_c


def _conjugate_gradient(
    X: _Centred, curvature, grad_w, grad_c, precondition: _Preconditioner, active, forcing: float, max_cg: int
):
    """Approximately solve H [dw; dc] = -[grad_w; grad_c] per layer; also return X dw + dc.

    H = [[X^T D X + I, X^T D 1], [1^T D X, 1^T D 1]] with D = diag(curvature). CG stops at a
    residual of forcing * |g| on every still active layer: inexact steps, a few more of them,
    fewer passes over the features in all.
    """
    r_w, r_c = -grad_w, -grad_c
    x_w, x_c = torch.zeros_like(grad_w), torch.zeros_like(grad_c)
    x_z = torch.zeros_like(curvature)
    p_w, p_c = precondition(r_w, r_c)
    rho = (r_w * p_w).sum(1) + r_c * p_c
    target = forcing * torch.sqrt(r_w.square().sum(1) + r_c.square())
    for _ in range(max_cg):
        p_z, hp_w, d_p = X.curvature_times(p_w, p_c, curvature)
        hp_w = hp_w + p_w
        hp_c = d_p.sum(1)
        alpha = rho / ((p_w * hp_w).sum(1) + p_c * hp_c).clamp_min(1e-30)
        x_w, x_c, x_z = x_w + alpha[:, None] * p_w, x_c + alpha * p_c, x_z + alpha[:, None] * p_z
        r_w, r_c = r_w - alpha[:, None] * hp_w, r_c - alpha * hp_c
        if bool(((torch.sqrt(r_w.square().sum(1) + r_c.square()) <= target) | ~active).all()):
            break
        s_w, s_c = precondition(r_w, r_c)
        rho_next = (r_w * s_w).sum(1) + r_c * s_c
        beta = rho_next / rho.clamp_min(1e-30)
        p_w, p_c, rho = s_w + beta[:, None] * p_w, s_c + beta * p_c, rho_next
    return x_w, x_c, x_z


def _armijo_step(z, y, sample_scale, w, step_z, step_w, grad_w, grad_c, step_c, halvings: int = 20):
    """Largest t in {1, 1/2, ...} with sufficient decrease, per layer. The objective is a function
    of the logits and w only, so every trial costs O(n) without touching the features; the full
    ladder is only evaluated when the Newton step t = 1 fails somewhere. Float64: near the optimum
    the decrease falls below float32 resolution of the objective, and a rounding-error "failure"
    would stall the layer on ever smaller steps."""
    z, y, sample_scale, w, step_z, step_w = (x.double() for x in (z, y, sample_scale, w, step_z, step_w))
    slope = (grad_w * step_w).sum(1) + grad_c * step_c
    loss_0 = _objective(z, w, y, sample_scale)
    full = _objective(z + step_z, w + step_w, y, sample_scale) <= loss_0 + 1e-4 * slope
    if bool(full.all()):
        return torch.ones_like(grad_c)
    t = 0.5 ** torch.arange(halvings, dtype=z.dtype, device=z.device)  # [T]
    z_t = z[:, None, :] + t[None, :, None] * step_z[:, None, :]
    w_t = w[:, None, :] + t[None, :, None] * step_w[:, None, :]
    ok = _objective(z_t, w_t, y, sample_scale) <= loss_0[:, None] + 1e-4 * t[None, :] * slope[:, None]
    smallest = torch.full_like(slope, halvings - 1, dtype=torch.long)
    first_ok = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), smallest)
    return t[first_ok].to(grad_c.dtype)


def _objective(z: torch.Tensor, w: torch.Tensor, y: torch.Tensor, sample_scale: torch.Tensor) -> torch.Tensor:
    bce = F.softplus(z) - y * z
    return (sample_scale * bce).sum(-1) + 0.5 * w.square().sum(-1)
