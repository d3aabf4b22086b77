"""BLINK answers scored (SPEC E4, E2): the accuracy per subtask with the paired difference from the
unblocked answers, as one workflow job for all models.

Apart from the answering harness (imagekv.interventions.multiple_choice), so that this job, a cheap
read of answer tables, imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from imagekv.plan import SUBTASK_SUMMARIES
from imagekv.results import read_table, stamp, write_table_rows

DEFAULT_BOOTSTRAP_RESAMPLES = 10_000
DEFAULT_BOOTSTRAP_SEED = 0
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


def accuracy_table(subtasks: Sequence[str], correct: Sequence[bool]) -> dict:
    """Accuracy per subtask, over all questions (`overall`) and averaged over subtasks."""
    if len(subtasks) != len(correct) or not subtasks:
        raise ValueError(f"need one correctness flag per question, got {len(subtasks)} and {len(correct)}")
    flags = np.asarray(correct, dtype=float)
    names = np.asarray(subtasks)
    per_subtask = {name: float(flags[names == name].mean()) for name in sorted(set(subtasks))}
    return {
        "per_subtask": per_subtask,
        "count": {name: int((names == name).sum()) for name in per_subtask},
        "overall": float(flags.mean()),
        "subtask_mean": float(np.mean(list(per_subtask.values()))),
    }


def paired_bootstrap(
    correct_base: Sequence[bool],
    correct_new: Sequence[bool],
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
    level: float = 0.95,
) -> dict[str, float]:
    """Accuracy difference new - base with a percentile CI from resampling questions (paired)."""
    base, new = np.asarray(correct_base, dtype=float), np.asarray(correct_new, dtype=float)
    if base.shape != new.shape or base.ndim != 1 or not len(base):
        raise ValueError(f"paired bootstrap needs two equal-length flag lists, got {base.shape} and {new.shape}")
    difference = new - base
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            difference[rng.integers(0, len(difference), size=(min(1000, resamples - done), len(difference)))].mean(1)
            for done in range(0, resamples, 1000)
        ]
    )
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"delta": float(difference.mean()), "low": float(low), "high": float(high), "resamples": resamples}
