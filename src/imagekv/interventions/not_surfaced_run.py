"""E6 as a workflow job: per MLM and read-out subtask, the value read-out of the stored BLINK
values against the MLM's own unblocked answers, per layer and at the honest and oracle layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from imagekv.datasets import load_dataset
from imagekv.datasets.schema import BlinkItem
from imagekv.features import FeatureStore
from imagekv.interventions.multiple_choice import LETTERS
from imagekv.interventions.not_surfaced import layer_similarities, not_surfaced_report, readout_choices
from imagekv.results import read_table, stamp, write_table_rows

NOT_SURFACED_SORT = ("model", "subtask", "readout", "selection", "layer")


def not_surfaced(spec: dict, output: Path) -> None:
    dataset = load_dataset(spec["dataset"], Path(spec["dataset_root"]), spec["dataset_cfg"])
    items = {item.item_id: item for item in dataset.samples()}
    rows = []
    for model, paths in sorted(spec["models"].items()):
        store = FeatureStore(paths["features"])
        answers = read_table(paths["answers"])
        answers = answers[answers["condition"] == spec["condition"]]
        for subtask, kinds in sorted(spec["params"]["readouts"].items()):
            questions = answers[answers["subtask"] == subtask].sort_values("item_id")
            if len(questions) < 2:
                raise ValueError(f"{paths['answers']}: {len(questions)} {subtask} question(s); interventions."
                                 f"not_surfaced.readouts.{subtask} needs at least 2")
            for kind in kinds:
                report = subtask_report(store, [items[i] for i in questions["item_id"]], list(questions["choice"]),
                                        kind, spec["params"]["split_seed"])
                rows += _report_rows(report, model=model, subtask=subtask, readout=kind,
                                     primary=spec["params"]["layer_selection"])
    write_table_rows(stamp(pd.DataFrame(rows), spec), output, NOT_SURFACED_SORT)


def subtask_report(store: FeatureStore, items: Sequence[BlinkItem], choices: Sequence[str], kind: str,
                   split_seed: int) -> dict:
    """not_surfaced_report for one subtask: image 0 of each item is the reference, the others its options."""
    readout = []
    for item in items:
        if len(item.image_ids) != len(item.choices) + 1:
            raise ValueError(f"BLINK item {item.item_id}: {len(item.image_ids)} images for {len(item.choices)} "
                             "options; the value read-out needs a reference image plus one image per option")
        reference, *candidates = (store.features(image_id, "values") for image_id in item.image_ids)
        readout.append(readout_choices(layer_similarities(reference, candidates, kind)).numpy())
    truth = [LETTERS.index(item.answer) for item in items]
    model_choice = [LETTERS.index(choice) for choice in choices]
    return not_surfaced_report(np.stack(readout), truth, model_choice, store.layers, split_seed)


def _report_rows(report: dict, primary: str, **keys) -> list[dict]:
    common = keys | {"n": report["num_questions"], "model_accuracy": report["model_accuracy"]}
    rows = [
        common | {"selection": "layer", "layer": str(layer), "readout_accuracy": accuracy, "not_surfaced": hidden,
                  "primary": False}
        for layer, accuracy, hidden in zip(report["layers"], report["readout_accuracy"], report["not_surfaced"])
    ]
    for selection in ("honest", "oracle"):
        chosen = report[selection]
        layer = "/".join(map(str, chosen["layers_chosen"])) if selection == "honest" else str(chosen["layer"])
        rows.append(common | {"selection": selection, "layer": layer, "readout_accuracy": chosen["readout_accuracy"],
                              "not_surfaced": chosen["not_surfaced"], "primary": selection == primary})
    return rows
