"""Tidy result tables: one row per (run, model, representation, task, layer, metric).

Every row carries the hash of the spec that produced it and the probe hyperparameters used, so a
number in a figure can be traced to the exact settings behind it. The intervention tables are
written and read the same way (`write_table_rows`, `read_table`, `stamp`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from imagekv.config import canonical_json, spec_hash
from imagekv.io import atomic_path

COLUMNS = [
    "run", "model", "representation", "task", "dataset", "prefix",
    "layer", "metric", "value", "n", "grid", "config_hash", "params",
]
SORT_KEYS = ["run", "model", "representation", "task", "dataset", "prefix", "layer", "metric"]


def tidy_rows(spec: dict, rows: Iterable[dict], grid: str) -> pd.DataFrame:
    """Attach the identifying columns of `spec` and the token grid ("27x27") to a probe's
    {layer, metric, value, n} rows; a row's "tuned" values (T3/T4 tau) override its params."""
    rows = list(rows)
    frame = pd.DataFrame(rows, columns=["layer", "metric", "value", "n"])
    frame["grid"] = grid
    for key in ("run", "model", "representation", "task", "dataset", "prefix"):
        frame[key] = spec[key]
    frame["config_hash"] = spec_hash(spec)
    frame["params"] = [canonical_json(spec["params"] | row.get("tuned", {})) for row in rows]
    return frame[COLUMNS]


def stamp(frame: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """The hash of the job spec (`config_hash`) and the settings it used (`params`) on every row."""
    return frame.assign(config_hash=spec_hash(spec), params=canonical_json(spec.get("params", {})))


def write_table_rows(frame: pd.DataFrame, output: str | Path, sort: Sequence[str]) -> None:
    """Sorted rows and fixed float formatting: equal results give byte-identical files."""
    frame = frame.sort_values(list(sort), kind="stable").reset_index(drop=True)
    with atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


class ResultsFileError(ValueError):
    """A result table that is not what it should be; the message names the file."""


def read_table(path: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """A result table, with at least the columns `required`."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultsFileError(f"{path}: not a result table (CSV): {error}") from error
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ResultsFileError(f"{path}: lacks the columns {missing}; it has {list(frame.columns)}")
    return frame


def concat_tables(
    inputs: Iterable[str | Path], output: str | Path, sort: Sequence[str], required: Sequence[str] = ()
) -> None:
    tables = [read_table(p, list(dict.fromkeys([*required, *sort]))) for p in inputs]
    write_table_rows(pd.concat(tables, ignore_index=True), output, sort)


def write_results(frame: pd.DataFrame, output: str | Path) -> None:
    write_table_rows(frame, output, SORT_KEYS)


def read_results(path: str | Path) -> pd.DataFrame:
    """Probe results: a result table with the tidy columns."""
    return read_table(path, COLUMNS)


def collect(inputs: Iterable[str | Path], output: str | Path) -> None:
    concat_tables(inputs, output, SORT_KEYS, COLUMNS)
