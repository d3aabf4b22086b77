"""E4 detection as a workflow job: the cross-image key statistics of a fixed-layout feature store,
written as the model's flags record (key_variance.json) and tidy rows per layer and threshold; and
the reading of that record that blocking and the masked probes share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from imagekv.config import spec_hash
from imagekv.features import FeatureStore
from imagekv.interventions.key_variance import KeyStatistics, KeyVarianceConfig, KeyVarianceResult, calibrated
from imagekv.io import write_json
from imagekv.results import stamp, write_table_rows

KEY_VARIANCE_SORT = ("model", "metric", "threshold", "layer")


def key_statistics(store: FeatureStore, cfg: KeyVarianceConfig = KeyVarianceConfig()) -> KeyVarianceResult:
    """Cross-image key statistics (and mean value norms) of every position of a fixed-layout store."""
    if store.grid_label() == "variable":
        raise ValueError(
            f"{store.manifest_path}: the images have different token grids; key variance needs one fixed "
            "layout (models.<name>.view: base, or resolution: fixed)"
        )
    stats = KeyStatistics(store.layers, cfg.calibration_resamples, cfg.calibration_seed)
    for image_id in store.image_ids:
        keys, values = (store.features(image_id, name) for name in ("keys", "values"))
        stats.update(keys.flatten(1, 2)[None], values.flatten(1, 2)[None])
    return stats.result()


def key_variance(spec: dict, features: Path, json_output: Path, csv_output: Path) -> None:
    store = FeatureStore(features)
    cfg = KeyVarianceConfig.from_config(spec["params"])
    result = key_statistics(store, cfg)
    cfg, calibration = calibrated(result, cfg)  # tau per model (SPEC E4.1), when asked for
    record = result.summary(cfg) | {
        "calibration": calibration,
        "model": spec["model"],
        "grid": store.grid_label(),
        "nu": result.nu.tolist(),
        # per layer and position, the mean value norm over the pool (R-F5 c); None without values
        "value_norm_map": None if result.value_norm is None else result.value_norm.tolist(),
        "config_hash": spec_hash(spec),
        "spec": spec,
    }
    write_json(json_output, record)
    rows = key_variance_rows(result, cfg, spec["model"], store.grid_label())
    rows = rows.assign(dataset=spec["dataset"], prefix=spec["prefix"])
    write_table_rows(stamp(rows, spec), csv_output, KEY_VARIANCE_SORT)


def key_variance_rows(result: KeyVarianceResult, cfg: KeyVarianceConfig, model: str, grid: str) -> pd.DataFrame:
    """Per layer: the flagged fraction at each tau of the sweep, the cosine cross-check, and the mean
    value norm of flagged and unflagged positions at the primary tau."""
    series = [("flagged_fraction", tau, result.flagged_fraction(tau).tolist()) for tau in sorted({cfg.tau, *cfg.tau_sweep})]
    cosine = result.cosine_flags(cfg.cosine_threshold).double().mean(dim=-1).tolist()
    series.append(("cosine_flagged_fraction", cfg.cosine_threshold, cosine))
    if result.value_norm is not None:
        norms = result.value_norm_summary(cfg.tau)
        series += [(f"value_norm_{kind}", cfg.tau, values) for kind, values in norms.items()]
    rows = [
        {"model": model, "metric": metric, "threshold": threshold, "layer": layer, "value": value,
         "primary": metric != "flagged_fraction" or threshold == cfg.tau}
        for metric, threshold, values in series
        for layer, value in zip(result.layers, values)
    ]
    return pd.DataFrame(rows).assign(num_images=result.num_images, num_positions=int(result.nu.shape[1]), grid=grid)


def flagged_layout_positions(flags: dict, layers: str | Sequence[int]) -> dict[int, torch.Tensor]:
    """The fixed-layout positions to block per layer: the flagged ones of every layer >= ell0
    (`layers: from_ell0`), or of the inclusive band [first, last]."""
    if layers == "from_ell0":
        if flags["ell0"] is None:
            return {}
        chosen = [layer for layer in flags["layers"] if layer >= flags["ell0"]]
    else:
        first, last = layers
        chosen = [layer for layer in flags["layers"] if first <= layer <= last]
    by_layer = dict(zip(flags["layers"], flags["flagged_positions"]))
    return {layer: torch.tensor(by_layer[layer], dtype=torch.long) for layer in chosen if by_layer[layer]}
