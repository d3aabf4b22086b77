"""E4 blocking on BLINK as a workflow job: each MLM answers every question under each blocking
condition (one job per model); imagekv.interventions.blink_accuracy scores the answers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from imagekv.config import canonical_json
from imagekv.datasets import load_dataset
from imagekv.images import load_rgb
from imagekv.interventions.blocking import all_image_keys, random_control
from imagekv.interventions.key_variance_run import flagged_layout_positions
from imagekv.interventions.multiple_choice import AnswerLayout, BlockRule, answer_question, question_text
from imagekv.io import read_json
from imagekv.results import stamp, write_table_rows

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
