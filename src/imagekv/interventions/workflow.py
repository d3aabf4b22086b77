"""The intervention stages as workflow jobs: read what a rule names, call the tested computational
modules (key_variance, blocking, multiple_choice, not_surfaced, correlation), write small tidy files.

Every row written carries the hash of the job spec (`config_hash`) and the settings it used
(`params`), like the probe results.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imagekv.config import canonical_json, spec_hash
from imagekv.datasets import load_dataset
from imagekv.datasets.schema import BlinkItem
from imagekv.features import FeatureStore
from imagekv.images import load_rgb
from imagekv.interventions.blocking import all_image_keys, random_control
from imagekv.interventions.correlation import projection_correlation
from imagekv.interventions.key_variance import KeyStatistics, KeyVarianceConfig, KeyVarianceResult, calibrated
from imagekv.interventions.multiple_choice import (
    LETTERS,
    AnswerLayout,
    BlockRule,
    accuracy_table,
    answer_question,
    paired_bootstrap,
    question_text,
)
from imagekv.interventions.not_surfaced import layer_similarities, not_surfaced_report, readout_choices
from imagekv.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

CONDITIONS = ("none", "flagged", "random", "all_image")
SUBTASK_SUMMARIES = ("overall", "subtask_mean")  # rows beside the subtasks in the accuracy table


def write_table_rows(frame: pd.DataFrame, output: str | Path, sort: Sequence[str]) -> None:
    """Sorted rows and fixed float formatting: equal results give byte-identical files."""
    frame = frame.sort_values(list(sort), kind="stable").reset_index(drop=True)
    with atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


def read_table(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def concat_tables(inputs: Iterable[str | Path], output: str | Path, sort: Sequence[str]) -> None:
    write_table_rows(pd.concat([read_table(p) for p in inputs], ignore_index=True), output, sort)


def _stamp(frame: pd.DataFrame, spec: dict) -> pd.DataFrame:
    return frame.assign(config_hash=spec_hash(spec), params=canonical_json(spec.get("params", {})))


# --- E4 detection ----------------------------------------------------------------------------------

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
        "config_hash": spec_hash(spec),
        "spec": spec,
    }
    write_json(json_output, record)
    rows = key_variance_rows(result, cfg, spec["model"], store.grid_label())
    rows = rows.assign(dataset=spec["dataset"], prefix=spec["prefix"])
    write_table_rows(_stamp(rows, spec), csv_output, KEY_VARIANCE_SORT)


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


# --- E4 blocking on BLINK --------------------------------------------------------------------------

ANSWER_SORT = ("model", "condition", "subtask", "item_id")


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


def layout_offsets(backbone, image, num_positions: int) -> torch.Tensor:
    """Offsets, within the image's run of tokens, of the fixed-layout grid the flags refer to."""
    inputs = backbone.model_inputs(image)
    count = int((inputs["input_ids"][0] == backbone.image_token_id).sum())
    offsets, grid = backbone.grid_tokens(inputs, image, count)
    if len(offsets) != num_positions:
        raise ValueError(
            f"{backbone.name}: a BLINK image gives a {grid.rows}x{grid.cols} grid, but the flags come from a "
            f"layout of {num_positions} positions; detect and block in the same fixed layout"
        )
    return offsets


def block_rule(
    condition: str, flagged: Mapping[int, torch.Tensor], offsets: Sequence[torch.Tensor], seed: int
) -> BlockRule | None:
    """What one condition blocks in a question whose images have the given layout offsets: nothing,
    the flagged positions of every image, as many random positions of the same grids (control c), or
    every image key in the flagged layers (control d)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown blocking condition {condition!r}; expected one of {CONDITIONS}")
    if condition == "none":
        return None

    def rule(layout: AnswerLayout) -> dict[int, torch.Tensor]:
        grids = [start + offset for start, offset in zip(layout.image_starts, offsets)]
        blocked = {layer: torch.cat([grid[positions] for grid in grids]) for layer, positions in flagged.items()}
        if condition == "flagged":
            return blocked
        if condition == "random":
            return random_control(blocked, torch.cat(grids), seed)
        image_keys = torch.cat([torch.arange(s, s + n) for s, n in zip(layout.image_starts, layout.image_lengths)])
        return all_image_keys(sorted(blocked), image_keys)

    return rule


def blink_answers(spec: dict, flags_path: Path, output: Path) -> None:
    from imagekv.extract import resolve_device, resolve_dtype
    from imagekv.models.registry import build_backbone

    params = spec["params"]
    device = resolve_device(spec["device"])
    backbone = build_backbone(spec["model"], spec["model_cfg"], device=device,
                              dtype=resolve_dtype(spec["dtype"], device))
    dataset = load_dataset(spec["dataset"], Path(spec["dataset_root"]), spec["dataset_cfg"])
    paths = {ref.image_id: ref.path for ref in dataset.images()}
    flags = read_json(flags_path)
    flagged = flagged_layout_positions(flags, params["layers"])
    log.info("%s: blocking %d layers: %s", spec["model"], len(flagged), {k: len(v) for k, v in flagged.items()})
    rows = []
    for number, item in enumerate(dataset.samples()):
        prepared = [backbone.prepare_image(load_rgb(paths[image_id])) for image_id in item.image_ids]
        images = backbone.question_images(prepared)
        offsets = [layout_offsets(backbone, image, flags["num_positions"]) for image in images]
        text = question_text(item, params["answer_instruction"])
        for condition in params["conditions"]:
            rule = block_rule(condition, flagged, offsets, seed=params["random_seed"] + number)
            result = answer_question(backbone.model, backbone.processor, text, images, len(item.choices),
                                     block_rule=rule, greedy_tokens=params["greedy_tokens"])
            rows.append({
                "model": spec["model"], "condition": condition, "subtask": item.subtask, "item_id": item.item_id,
                "answer": item.answer, "choice": result.scores.letter, "correct": result.scores.letter == item.answer,
                "decoded": result.generated_text is not None, "generated_letter": result.generated_letter,
                "generated_text": result.generated_text,
                "log_likelihoods": canonical_json([round(x, 6) for x in result.scores.log_likelihoods]),
                "blocked_layers": len(flagged) if condition != "none" else 0,
            })
        log.info("question %d (%s) done", number + 1, item.item_id)
    write_table_rows(_stamp(pd.DataFrame(rows), spec), output, ANSWER_SORT)


ACCURACY_SORT = ("model", "condition", "subtask")


def blink_accuracy(spec: dict, inputs: Iterable[str | Path], output: Path) -> None:
    """Accuracy per subtask, overall and averaged over subtasks, per model and condition; for every
    condition but the baseline, the paired difference from it with a bootstrap 95 % interval."""
    answers = pd.concat([read_table(p) for p in inputs], ignore_index=True)
    rows = []
    for model, frame in answers.groupby("model"):
        by_condition = {c: group.set_index("item_id").sort_index() for c, group in frame.groupby("condition")}
        if spec["baseline"] not in by_condition:
            raise ValueError(f"the BLINK answers of {model} hold no {spec['baseline']!r} condition")
        base = by_condition[spec["baseline"]]
        for condition, group in by_condition.items():
            if not group.index.equals(base.index):
                raise ValueError(f"{model}: condition {condition!r} answers other questions than the baseline")
            rows += _accuracy_rows(model, condition, group, None if condition == spec["baseline"] else base, spec)
    write_table_rows(_stamp(pd.DataFrame(rows), spec), output, ACCURACY_SORT)


def _accuracy_rows(model: str, condition: str, group: pd.DataFrame, base: pd.DataFrame | None, spec: dict) -> list:
    table = _accuracy_table_of(group)
    base_table = _accuracy_table_of(base) if base is not None else None
    greedy = group["decoded"].astype(bool)  # a decoded answer naming no letter counts as wrong
    greedy_correct = group["generated_letter"] == group["answer"]
    rows = []
    for subtask in [*table["per_subtask"], *SUBTASK_SUMMARIES]:
        rows_of = group["subtask"] == subtask if subtask in table["per_subtask"] else pd.Series(True, group.index)
        accuracy = table["per_subtask"].get(subtask, table.get(subtask))
        row = {"model": model, "condition": condition, "subtask": subtask, "accuracy": accuracy,
               "n": int(rows_of.sum()),
               "greedy_accuracy": float(greedy_correct[rows_of].mean()) if greedy[rows_of].all() else np.nan,
               "delta": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        if base is not None and subtask == "subtask_mean":  # a mean of means: no paired resampling
            row["delta"] = accuracy - base_table["subtask_mean"]
        elif base is not None:
            ci = paired_bootstrap(base["correct"][rows_of].astype(bool), group["correct"][rows_of].astype(bool),
                                  resamples=spec["resamples"], seed=spec["seed"])
            row |= {"delta": ci["delta"], "ci_low": ci["low"], "ci_high": ci["high"]}
        rows.append(row)
    return rows


def _accuracy_table_of(frame: pd.DataFrame) -> dict:
    return accuracy_table(list(frame["subtask"]), list(frame["correct"].astype(bool)))


# --- E6 present but not surfaced -------------------------------------------------------------------

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
    write_table_rows(_stamp(pd.DataFrame(rows), spec), output, NOT_SURFACED_SORT)


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


# --- E2 projection quality against perception ------------------------------------------------------


def correlation(spec: dict, probes: Path, accuracy: Path, output: Path) -> None:
    from imagekv.figures.layerwise import headline_rows
    from imagekv.results import read_results

    rows = headline_rows(read_results(probes))
    rows = rows[rows["model"].isin(spec["models"])]
    projection_rows = rows[rows["representation"] == "projection"]
    tasks = sorted(t for t, group in projection_rows.groupby("task") if set(group["model"]) == set(spec["models"]))
    if not tasks:
        raise ValueError(f"{probes}: no task has input-projection probe rows for every model {spec['models']}")
    projection = {m: {t: _value(projection_rows, m, t, "max") for t in tasks} for m in spec["models"]}
    value_rows = rows[rows["representation"] == "values"]
    best_layer = {m: {t: _value(value_rows, m, t, "max") for t in tasks} for m in spec["models"]}
    scores = read_table(accuracy)
    scores = scores[(scores["condition"] == spec["condition"]) & (scores["subtask"] == spec["subtask"])]
    perception = {m: float(scores.loc[scores["model"] == m, "accuracy"].iloc[0]) for m in spec["models"]
                  if (scores["model"] == m).any()}
    missing = sorted(set(spec["models"]) - set(perception))
    if missing:
        raise ValueError(f"{accuracy}: no {spec['subtask']} accuracy ({spec['condition']}) for {missing}")
    write_json(output, {
        "spec": spec, "config_hash": spec_hash(spec), "tasks": tasks, "projection": projection,
        "best_layer": best_layer, "perception": perception,
        **projection_correlation(projection, best_layer, perception),
    })


def _value(rows: pd.DataFrame, model: str, task: str, how: str) -> float:
    values = rows[(rows["model"] == model) & (rows["task"] == task)]["value"]
    if values.empty:
        raise ValueError(f"no {task} probe rows for {model}")
    return float(values.agg(how))
