"""E4 detection: image key positions whose post-RoPE key hardly changes across images.

For each layer l and image-token position p of a fixed token layout, the normalised cross-image
variance is nu[l, p] = sum_d Var_x k[l, p, d](x) / median_p' sum_d Var_x k[l, p', d](x). A position
is input-agnostic at layer l when nu[l, p] < tau. The statistics are accumulated in float64 batch by
batch (Chan's parallel form of Welford's update), so the images never sit in memory together.

Calibration of tau per model (SPEC E4.1 "calibrate per model, e.g. so that the flagged set is stable
under resampling of the images"). Rule: nu is recomputed on `calibration_resamples` bootstrap
resamples of the image pool (the streaming Poisson bootstrap: each image enters each resample with
a Poisson(1) weight, so one pass suffices); for each tau of the sweep, the stability is the mean
over resamples of the Jaccard index between the flagged (layer, position) set of the resample and
that of the whole pool. The calibrated tau is the most stable one among those that flag at least
one position (the smaller among equals); if none flags any, the configured tau stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

DEFAULT_TAU = 0.1
DEFAULT_TAU_SWEEP = (0.05, 0.1, 0.2)
DEFAULT_COSINE_THRESHOLD = 0.95
DEFAULT_ELL0_FRACTION = 0.01
DEFAULT_CALIBRATION_RESAMPLES = 0  # 0 = no calibration: the configured tau is the primary one


@dataclass(frozen=True)
class KeyVarianceConfig:
    """The `interventions.key_variance` config section (SPEC E4; every value is [I])."""

    tau: float = DEFAULT_TAU
    tau_sweep: tuple[float, ...] = DEFAULT_TAU_SWEEP
    cosine_threshold: float = DEFAULT_COSINE_THRESHOLD
    ell0_fraction: float = DEFAULT_ELL0_FRACTION
    calibration_resamples: int = DEFAULT_CALIBRATION_RESAMPLES
    calibration_seed: int = 0

    @classmethod
    def from_config(cls, section: dict | None) -> "KeyVarianceConfig":
        section = dict(section or {})
        unknown = set(section) - set(cls.__dataclass_fields__)
        if unknown:
            raise KeyError(f"interventions.key_variance: unknown key(s) {sorted(unknown)}")
        if "tau_sweep" in section:
            section["tau_sweep"] = tuple(float(t) for t in section["tau_sweep"])
        return cls(**section)


class KeyStatistics:
    """Running per-(layer, position) statistics of keys (and optionally values) over images.

    `update` takes keys [images, layers, positions, dim] in the same token layout every time.
    """

    def __init__(self, layers: Sequence[int], resamples: int = 0, seed: int = 0):
        self.layers = tuple(int(layer) for layer in layers)
        self.count = 0
        self._bootstrap = PoissonBootstrap(resamples, seed) if resamples else None
        self._mean: torch.Tensor | None = None  # [L, P, D]
        self._sq_dev: torch.Tensor | None = None  # [L, P, D] sum of squared deviations
        self._unit_sum: torch.Tensor | None = None  # [L, P, D] sum of L2-normalised keys
        self._unit_sq_sum: torch.Tensor | None = None  # [L, P] sum of their squared norms (0 for a zero key)
        self._value_norm_sum: torch.Tensor | None = None  # [L, P]

    def update(self, keys: torch.Tensor, values: torch.Tensor | None = None) -> None:
        if keys.dim() != 4 or keys.shape[1] != len(self.layers):
            raise ValueError(
                f"keys must be [images, {len(self.layers)} layers, positions, dim], got {tuple(keys.shape)}"
            )
        if self._mean is not None and keys.shape[1:] != self._mean.shape:
            raise ValueError(f"token layout changed: keys {tuple(keys.shape[1:])} vs {tuple(self._mean.shape)}")
        batch = keys.to(torch.float64)
        n_new = batch.shape[0]
        batch_mean = batch.mean(dim=0)
        batch_sq_dev = ((batch - batch_mean) ** 2).sum(dim=0)
        units = torch.nn.functional.normalize(batch, dim=-1)
        unit_sum, unit_sq_sum = units.sum(dim=0), units.pow(2).sum(dim=(0, -1))
        if self._mean is None:
            self._mean, self._sq_dev = batch_mean, batch_sq_dev
            self._unit_sum, self._unit_sq_sum = unit_sum, unit_sq_sum
        else:
            total = self.count + n_new
            delta = batch_mean - self._mean
            self._mean = self._mean + delta * (n_new / total)
            self._sq_dev = self._sq_dev + batch_sq_dev + delta**2 * (self.count * n_new / total)
            self._unit_sum = self._unit_sum + unit_sum
            self._unit_sq_sum = self._unit_sq_sum + unit_sq_sum
        self.count += n_new
        if self._bootstrap is not None:
            self._bootstrap.update(batch)
        if values is not None:
            norms = values.to(torch.float64).norm(dim=-1).sum(dim=0)
            self._value_norm_sum = norms if self._value_norm_sum is None else self._value_norm_sum + norms

    def result(self) -> "KeyVarianceResult":
        if self.count < 2:
            raise ValueError(f"key variance needs at least 2 images, got {self.count}")
        total_variance = self._sq_dev.sum(dim=-1) / self.count  # [L, P]
        median = total_variance.median(dim=-1, keepdim=True).values  # lower median if P is even
        if (median <= 0).any():
            zero = [self.layers[i] for i in torch.nonzero(median.squeeze(-1) <= 0).flatten().tolist()]
            raise ValueError(f"median key variance is zero at layer(s) {zero}: nu is undefined")
        n = self.count
        # Mean over ordered pairs i != j of cos(k_i, k_j) = (|sum_i u_i|^2 - sum_i |u_i|^2) / (n (n - 1)).
        mean_cosine = (self._unit_sum.pow(2).sum(dim=-1) - self._unit_sq_sum) / (n * (n - 1))
        value_norm = None if self._value_norm_sum is None else self._value_norm_sum / n
        return KeyVarianceResult(
            layers=self.layers,
            nu=total_variance / median,
            total_variance=total_variance,
            mean_cosine=mean_cosine,
            value_norm=value_norm,
            num_images=n,
            bootstrap_nu=None if self._bootstrap is None else self._bootstrap.nu(),
        )


class PoissonBootstrap:
    """nu on bootstrap resamples of the images, accumulated in one pass: image x enters resample b
    with weight w_b(x) ~ Poisson(1). Keys are shifted by the first image's before summing, so the
    weighted sums stay small where the keys hardly vary (the positions that matter)."""

    def __init__(self, resamples: int, seed: int):
        self.resamples = resamples
        self.generator = torch.Generator().manual_seed(seed)
        self._shift = None  # [L, P, D] the first image's keys
        self._weight = torch.zeros(resamples, dtype=torch.float64)
        self._sum = None  # [B, L, P, D] weighted sum of shifted keys
        self._sq_sum = None  # [B, L, P] weighted sum of their squared norms

    def update(self, batch: torch.Tensor) -> None:
        """batch float64 [images, L, P, D]; one Poisson weight per (resample, image)."""
        if self._shift is None:
            self._shift = batch[0].clone()
            self._sum = torch.zeros(self.resamples, *batch.shape[1:], dtype=torch.float64)
            self._sq_sum = torch.zeros(self.resamples, *batch.shape[1:-1], dtype=torch.float64)
        ones = torch.ones(self.resamples, dtype=torch.float64)
        # drawn image by image, so the weights do not depend on how the images are batched
        weights = torch.stack([torch.poisson(ones, self.generator) for _ in range(batch.shape[0])], dim=1)
        shifted = batch - self._shift
        self._weight += weights.sum(dim=1)
        self._sum += torch.einsum("bi,ilpd->blpd", weights, shifted)
        self._sq_sum += torch.einsum("bi,ilp->blp", weights, shifted.pow(2).sum(dim=-1))

    def nu(self) -> torch.Tensor:
        """[B, L, P]; resamples with a total weight under 2 (no variance to speak of) are dropped."""
        kept = self._weight >= 2
        weight = self._weight[kept][:, None, None]
        mean = self._sum[kept] / weight[..., None]
        variance = (self._sq_sum[kept] / weight - mean.pow(2).sum(dim=-1)).clamp_min(0)
        median = variance.median(dim=-1, keepdim=True).values.clamp_min(torch.finfo(torch.float64).tiny)
        return variance / median


@dataclass
class KeyVarianceResult:
    """Per-(layer, position) statistics; row i of every [L, P] tensor is LM layer `layers[i]`."""

    layers: tuple[int, ...]
    nu: torch.Tensor
    total_variance: torch.Tensor
    mean_cosine: torch.Tensor
    value_norm: torch.Tensor | None
    num_images: int
    bootstrap_nu: torch.Tensor | None = None  # [B, L, P] nu on each bootstrap resample

    def stability(self, tau: float) -> float | None:
        """Mean over the bootstrap resamples of the Jaccard index between their flagged (layer,
        position) set at tau and the whole pool's (1 for a resample where both are empty); None
        when no resample and not the pool flags anything."""
        if self.bootstrap_nu is None or not len(self.bootstrap_nu):
            raise ValueError("no bootstrap resamples: set calibration_resamples")
        full = self.flags(tau)
        resampled = self.bootstrap_nu < tau
        union = (resampled | full).sum(dim=(1, 2))
        if not union.any():
            return None
        jaccard = (resampled & full).sum(dim=(1, 2)).double() / union.clamp_min(1)
        return float(torch.where(union > 0, jaccard, 1.0).mean())

    def calibrate(self, cfg: "KeyVarianceConfig") -> dict:
        """The module docstring's rule over cfg.tau_sweep: {"tau", "stability", "calibrated", ...}."""
        stability = {tau: self.stability(tau) for tau in cfg.tau_sweep}
        flagging = [tau for tau in sorted(cfg.tau_sweep) if self.flags(tau).any()]
        chosen = max(flagging, key=lambda tau: (stability[tau], -tau)) if flagging else cfg.tau
        return {
            "tau": chosen,
            "calibrated": bool(flagging),
            "configured_tau": cfg.tau,
            "stability": {str(tau): value for tau, value in stability.items()},
            "resamples": int(len(self.bootstrap_nu)),
            "seed": cfg.calibration_seed,
            "rule": "the most stable tau of the sweep (mean bootstrap Jaccard of the flagged set) among those "
                    "flagging any position, the smaller among equals; else the configured tau",
        }

    def flags(self, tau: float) -> torch.Tensor:
        """[L, P] bool: input-agnostic positions (nu < tau)."""
        return self.nu < tau

    def cosine_flags(self, threshold: float) -> torch.Tensor:
        """[L, P] bool: the cross-check (mean pairwise cosine across images > threshold)."""
        return self.mean_cosine > threshold

    def flagged_fraction(self, tau: float) -> torch.Tensor:
        """[L] fraction of positions flagged at each layer."""
        return self.flags(tau).double().mean(dim=-1)

    def first_layer(self, tau: float, min_fraction: float) -> int | None:
        """ell_0: the first LM layer whose flagged fraction exceeds `min_fraction`, else None."""
        above = (self.flagged_fraction(tau) > min_fraction).nonzero().flatten()
        return self.layers[int(above[0])] if len(above) else None

    def blocked_positions(
        self, tau: float, min_fraction: float, block_starts: Sequence[int] = (0,)
    ) -> dict[int, torch.Tensor]:
        """Flagged positions of every layer >= ell_0, as sequence positions for `block_attention`.

        `block_starts` are the sequence positions where each copy of the fixed layout begins (one per
        image in a multi-image prompt); layout position p becomes start + p for every start.
        """
        ell0 = self.first_layer(tau, min_fraction)
        if ell0 is None:
            return {}
        flags = self.flags(tau)
        starts = torch.as_tensor(list(block_starts), dtype=torch.long)
        blocked = {}
        for row, layer in enumerate(self.layers):
            if layer >= ell0:
                positions = flags[row].nonzero().flatten()
                blocked[layer] = (starts[:, None] + positions[None, :]).flatten()
        return blocked

    def value_norm_summary(self, tau: float) -> dict[str, list[float | None]]:
        """Per layer: mean value norm of flagged and of unflagged positions (None if a set is empty)."""
        if self.value_norm is None:
            raise ValueError("no values were accumulated: pass values= to KeyStatistics.update")
        flags = self.flags(tau)
        return {
            "flagged": [_masked_mean(row, mask) for row, mask in zip(self.value_norm, flags)],
            "unflagged": [_masked_mean(row, ~mask) for row, mask in zip(self.value_norm, flags)],
        }

    def summary(self, cfg: KeyVarianceConfig) -> dict:
        """A JSON-ready record of the detection at cfg.tau, the tau sweep and the cosine cross-check."""
        flags = self.flags(cfg.tau)
        cosine = self.cosine_flags(cfg.cosine_threshold)
        record = {
            "layers": list(self.layers),
            "num_images": self.num_images,
            "num_positions": int(self.nu.shape[1]),
            "tau": cfg.tau,
            "ell0_fraction": cfg.ell0_fraction,
            "ell0": self.first_layer(cfg.tau, cfg.ell0_fraction),
            "flagged_count": flags.sum(dim=-1).tolist(),
            "flagged_fraction": self.flagged_fraction(cfg.tau).tolist(),
            "flagged_positions": [row.nonzero().flatten().tolist() for row in flags],
            "sweep": {
                str(tau): {
                    "flagged_fraction": self.flagged_fraction(tau).tolist(),
                    "ell0": self.first_layer(tau, cfg.ell0_fraction),
                }
                for tau in cfg.tau_sweep
            },
            "cosine_threshold": cfg.cosine_threshold,
            "cosine_flagged_fraction": cosine.double().mean(dim=-1).tolist(),
            "cosine_agreement": (cosine == flags).double().mean(dim=-1).tolist(),
        }
        if self.value_norm is not None:
            record["value_norm"] = self.value_norm_summary(cfg.tau)
        return record


def calibrated(result: KeyVarianceResult, cfg: KeyVarianceConfig) -> tuple[KeyVarianceConfig, dict | None]:
    """cfg with tau replaced by the calibrated one, and the calibration record (None: not asked for)."""
    if not cfg.calibration_resamples:
        return cfg, None
    calibration = result.calibrate(cfg)
    return replace(cfg, tau=calibration["tau"]), calibration


def _masked_mean(row: torch.Tensor, mask: torch.Tensor) -> float | None:
    return float(row[mask].mean()) if mask.any() else None
