"""E6 as a workflow job: per MLM and read-out subtask, the value read-out of the stored BLINK
values against the MLM's own unblocked answers, per layer and at the honest and oracle layer.

The markers of the correspondence subtasks are located once per question from the drawn images
(imagekv.datasets.blink_markers). A question whose markers are not found counts as a wrong read-out
(so every subtask keeps the MLM's denominator); the rows say how many there were."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from imagekv.datasets import load_dataset
from imagekv.datasets.blink_markers import REFERENCE_LABEL, Marker, MarkerError, locate_markers
from imagekv.datasets.schema import OPTION_LETTERS, BlinkItem
from imagekv.features import FeatureStore
from imagekv.images import load_rgb
from imagekv.interventions.not_surfaced import (
    MARKED_SUBTASKS,
    UNLOCATED,
    layer_similarities,
    not_surfaced_report,
    readout_choices,
    tokens_under,
)
from imagekv.results import read_table, stamp, write_table_rows

log = logging.getLogger(__name__)

NOT_SURFACED_SORT = ("model", "subtask", "readout", "selection", "layer")


def not_surfaced(spec: dict, output: Path) -> None:
    dataset = load_dataset(spec["dataset"], Path(spec["dataset_root"]), spec["dataset_cfg"])
    items = {item.item_id: item for item in dataset.samples()}
    image_paths = {ref.image_id: ref.path for ref in dataset.images()}
    marked = set(spec["params"]["readouts"]) & set(MARKED_SUBTASKS)
    markers = {item_id: item_markers(item, image_paths) for item_id, item in items.items() if item.subtask in marked}
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
                                        kind, spec["params"]["split_seed"], markers)
                rows += _report_rows(report, model=model, subtask=subtask, readout=kind,
                                     primary=spec["params"]["layer_selection"])
    write_table_rows(stamp(pd.DataFrame(rows), spec), output, NOT_SURFACED_SORT)


def item_markers(item: BlinkItem, paths: Mapping[str, Path]) -> list[Marker] | None:
    """The markers of a correspondence question: REF on image 0, then one per option on image 1 (the
    option "(B) Point B" is the ring labelled B); None, logged, when they are not found as drawn."""
    if len(item.image_ids) != 2:
        raise ValueError(f"BLINK item {item.item_id}: {len(item.image_ids)} images; a {item.subtask} question has "
                         "a reference image and a candidate image")
    labels = tuple(OPTION_LETTERS[: len(item.choices)])
    try:
        reference = locate_markers(np.asarray(load_rgb(paths[item.image_ids[0]])), (REFERENCE_LABEL,))
        candidates = locate_markers(np.asarray(load_rgb(paths[item.image_ids[1]])), labels)
    except MarkerError as error:
        log.warning("BLINK item %s: markers not located (%s); its read-out counts as wrong", item.item_id, error)
        return None
    return [reference[REFERENCE_LABEL], *(candidates[label] for label in labels)]


def item_embeddings(store: FeatureStore, item: BlinkItem, markers: Sequence[Marker] | None):
    """(reference, candidates) value tokens [layers, tokens, dim] the read-out compares: whole images
    (image 0 the reference, the others the options), or the tokens under each marker."""
    if item.subtask not in MARKED_SUBTASKS:
        if len(item.image_ids) != len(item.choices) + 1:
            raise ValueError(f"BLINK item {item.item_id}: {len(item.image_ids)} images for {len(item.choices)} "
                             "options; the value read-out needs a reference image plus one image per option")
        reference, *candidates = (store.features(image_id, "values") for image_id in item.image_ids)
        return reference, candidates
    first, second = item.image_ids
    reference = tokens_under(store.features(first, "values"), store.grid(first), markers[0])
    values, grid = store.features(second, "values"), store.grid(second)
    return reference, [tokens_under(values, grid, marker) for marker in markers[1:]]


def subtask_report(store: FeatureStore, items: Sequence[BlinkItem], choices: Sequence[str], kind: str,
                   split_seed: int, markers: Mapping[str, list[Marker] | None] | None = None) -> dict:
    """not_surfaced_report for one subtask, plus how many questions had no located markers."""
    readout, unlocated = [], 0
    for item in items:
        located = (markers or {}).get(item.item_id)
        if item.subtask in MARKED_SUBTASKS and located is None:
            readout.append(np.full(len(store.layers), UNLOCATED))
            unlocated += 1
            continue
        reference, candidates = item_embeddings(store, item, located)
        readout.append(readout_choices(layer_similarities(reference, candidates, kind)).numpy())
    truth = [OPTION_LETTERS.index(item.answer) for item in items]
    model_choice = [OPTION_LETTERS.index(choice) for choice in choices]
    report = not_surfaced_report(np.stack(readout), truth, model_choice, store.layers, split_seed)
    return report | {"markers_missing": unlocated}


def _report_rows(report: dict, primary: str, **keys) -> list[dict]:
    common = keys | {"n": report["num_questions"], "model_accuracy": report["model_accuracy"],
                     "markers_missing": report["markers_missing"]}
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
