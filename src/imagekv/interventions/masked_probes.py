"""E4.3: do the input-agnostic tokens carry artifacts into the values? The value probes rerun at the
late layers with the flagged positions excluded (SPEC E4.3), beside the same number of random
positions excluded (the control) and nothing excluded.

The flags are positions of the fixed token layout the key variance was measured in; the task
stores must use the same layout (LayerView checks it per image). Every condition runs the same
single-layer probe, so the no-exclusion rows are the like-for-like baseline of the other two (a
single-layer k-means draws other seeds than the all-layer run of the main probe table).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imagekv.config import canonical_json
from imagekv.datasets import load_dataset
from imagekv.features import FeatureStore, LayerView
from imagekv.interventions.blocking import random_control
from imagekv.interventions.key_variance_run import flagged_layout_positions
from imagekv.io import read_json
from imagekv.plan import MASKING_CONDITIONS as CONDITIONS
from imagekv.probes import run_probe
from imagekv.results import COLUMNS, tidy_rows, write_table_rows

SORT = ("model", "task", "layer", "condition", "metric")
EXTRA_COLUMNS = ("condition", "excluded", "masking")  # beside the probe result columns

log = logging.getLogger(__name__)


def exclusions(
    flagged: Mapping[int, torch.Tensor], num_positions: int, conditions: list[str], seed: int
) -> dict[int, dict[str, np.ndarray]]:
    """Per layer with flagged positions, per condition: bool [num_positions] of excluded positions."""
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown masking condition(s) {unknown}; expected some of {list(CONDITIONS)}")
    random = random_control(flagged, torch.arange(num_positions), seed)
    chosen = {"none": {}, "flagged": flagged, "random": random}
    out = {}
    for layer in sorted(flagged):
        out[layer] = {}
        for condition in conditions:
            mask = np.zeros(num_positions, dtype=bool)
            mask[torch.as_tensor(chosen[condition].get(layer, []), dtype=torch.long).numpy()] = True
            out[layer][condition] = mask
    return out


def masked_probes(spec: dict, flags_path: Path, output: Path) -> None:
    """Every task of `spec["tasks"]` (each a probe spec plus its store) at every masked layer and
    condition, one tidy table."""
    flags = read_json(flags_path)
    masking = spec["masking"]
    flagged = flagged_layout_positions(flags, masking["layers"])
    if not flagged:  # a finding, not a failure: the table then has no rows for this model
        log.warning("%s: no layer has flagged positions at tau=%s (layers: %s); nothing to mask",
                    flags_path, flags["tau"], masking["layers"])
        write_table_rows(pd.DataFrame(columns=[*COLUMNS, *EXTRA_COLUMNS]), output, SORT)
        return
    sets = exclusions(flagged, flags["num_positions"], masking["conditions"], masking["random_seed"])
    frames = []
    for task, task_spec in sorted(spec["tasks"].items()):
        dataset = load_dataset(task_spec["dataset"], Path(task_spec["dataset_root"]), task_spec["dataset_cfg"])
        store = FeatureStore(task_spec["features"])
        view = store.view(task_spec["stored"])
        probe_spec = {k: v for k, v in task_spec.items() if k != "features"} | {"masking": masking}
        missing = sorted(set(sets) - set(view.layers))
        if missing:
            raise ValueError(f"{store.manifest_path} holds layers {list(view.layers)}, not the masked layers {missing}")
        for layer, by_condition in sets.items():
            for condition, excluded in by_condition.items():
                source = LayerView(view, view.layers.index(layer), excluded)
                rows = tidy_rows(probe_spec, run_probe(task, dataset.samples(), source, task_spec["params"],
                                           split_seed=task_spec["split_seed"]),
                                 grid=store.grid_label())
                frames.append(rows.assign(condition=condition, excluded=int(excluded.sum())))
    frame = pd.concat(frames, ignore_index=True).assign(masking=canonical_json(masking))
    write_table_rows(frame[[*COLUMNS, *EXTRA_COLUMNS]], output, SORT)
