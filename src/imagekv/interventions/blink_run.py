"""E4 blocking on BLINK as workflow jobs: each MLM answers every question under each blocking
condition (one job per model), then the accuracy per subtask with the paired difference from the
unblocked answers (one job for all models)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imagekv.config import canonical_json
from imagekv.datasets import load_dataset
from imagekv.images import load_rgb
from imagekv.interventions.blocking import all_image_keys, random_control
from imagekv.interventions.key_variance_run import flagged_layout_positions
from imagekv.interventions.multiple_choice import (
    AnswerLayout,
    BlockRule,
    accuracy_table,
    answer_question,
    paired_bootstrap,
    question_text,
)
from imagekv.io import read_json
from imagekv.plan import SUBTASK_SUMMARIES
from imagekv.results import read_table, stamp, write_table_rows

log = logging.getLogger(__name__)

CONDITIONS = ("none", "flagged", "random", "all_image")
ANSWER_SORT = ("model", "condition", "subtask", "item_id")


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


def blink_answers(spec: dict, flags_path: Path | None, output: Path) -> None:
    """The model's answer to every question under each condition of `params.conditions`. The flags
    (the model's key_variance.json) are needed only to block: an unblocked run (E2's perception
    score, E6's MLM answer) may take any image settings, e.g. Qwen2.5-VL at native resolution.
    Every row records the model settings it was answered in (`model_cfg`)."""
    from imagekv.extract import resolve_device, resolve_dtype
    from imagekv.models.registry import build_backbone

    params = spec["params"]
    if flags_path is None and set(params["conditions"]) != {"none"}:
        raise ValueError(f"{spec['model']}: conditions {params['conditions']} block keys, which needs the "
                         "model's flags (--flags key_variance.json)")
    device = resolve_device(spec["device"])
    backbone = build_backbone(spec["model"], spec["model_cfg"], device=device,
                              dtype=resolve_dtype(spec["dtype"], device))
    dataset = load_dataset(spec["dataset"], Path(spec["dataset_root"]), spec["dataset_cfg"])
    paths = {ref.image_id: ref.path for ref in dataset.images()}
    flags = read_json(flags_path) if flags_path is not None else None
    flagged = flagged_layout_positions(flags, params["layers"]) if flags is not None else {}
    log.info("%s: blocking %d layers: %s", spec["model"], len(flagged), {k: len(v) for k, v in flagged.items()})
    rows = []
    for number, item in enumerate(dataset.samples()):
        prepared = [backbone.prepare_image(load_rgb(paths[image_id])) for image_id in item.image_ids]
        images = backbone.question_images(prepared)
        offsets = [layout_offsets(backbone, image, flags["num_positions"]) for image in images] if flags else []
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
    rows = pd.DataFrame(rows).assign(model_cfg=canonical_json(spec["model_cfg"]))
    write_table_rows(stamp(rows, spec), output, ANSWER_SORT)


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
    write_table_rows(stamp(pd.DataFrame(rows), spec), output, ACCURACY_SORT)


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
