"""The numbers the paper reports against ours, with the difference (config/paper_reported.yaml).

Each entry of the file names the paper's number (or null when it could not be read), where in the
paper it comes from, and which rows of one of our tidy result tables give the same quantity (or, for
a summary a rule writes as a JSON record such as E2's correlations, which key of that record). The
table lists every entry, so the unknown ones stay visible as such.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from imagekv.io import read_json
from imagekv.labels import Provenance
from imagekv.pairing import parse as parse_pairing
from imagekv.results import COLUMNS, read_results, read_table
from imagekv.tables import write_table

CAPTION = "Numbers reported by the paper against this replication (fractions; difference = replication - paper)"
ENTRY_KEYS = {"id", "quantity", "source", "reported", "replicated"}
SELECTOR_KEYS = {"table", "statistic", "where", "column"}
RECORD_KEYS = {"record", "key"}  # a JSON record's value: key is a dotted path into it
PROBES_TABLE = "probes"  # also the source of the footer's provenance
STATISTICS = ("max", "value")


def load_reported(path: str | Path) -> list[dict]:
    """The entries of the reported-numbers file; a malformed entry is an error naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        # libyaml's safe parser where PyYAML has it: the Snakefile reads this file on every run
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}  # noqa: S506
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a YAML file of reported numbers ({error})") from error
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list under 'entries'")
    for number, entry in enumerate(entries):
        name = entry.get("id", f"entry {number}") if isinstance(entry, dict) else f"entry {number}"
        if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
            raise ValueError(f"{path}: {name}: expected exactly the keys {sorted(ENTRY_KEYS)}")
        if entry["reported"] is not None and not isinstance(entry["reported"], (int, float)):
            raise ValueError(f"{path}: {name}: reported must be a number or null")
        _check_selector(path, name, entry["replicated"])
    ids = [entry["id"] for entry in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
    return entries


def _check_selector(path, name: str, selector: dict | None) -> None:
    if selector is None:
        return
    if "record" in selector:
        if set(selector) != RECORD_KEYS or not isinstance(selector["key"], str):
            raise ValueError(f"{path}: {name}: a record selector needs exactly record and key (a dotted path)")
        return
    if not {"table", "statistic", "where"} <= set(selector) <= SELECTOR_KEYS:
        raise ValueError(f"{path}: {name}: replicated needs table, statistic and where (and may name a column)")
    if selector["statistic"] not in STATISTICS:
        raise ValueError(f"{path}: {name}: statistic must be one of {STATISTICS}")
    if selector["table"] == PROBES_TABLE:  # the other tables' columns are checked when read
        unknown = sorted(set(selector["where"]) - set(COLUMNS))
        if unknown:
            raise ValueError(f"{path}: {name}: unknown result column(s) {unknown}")


def table_name(path: str, run: str) -> str:
    """"results/{run}/interventions/not_surfaced.csv" -> "interventions/not_surfaced"."""
    return Path(path).relative_to(f"results/{run}").with_suffix("").as_posix()


def result_tables(reported: str | Path, run: str) -> list[str]:
    """The tidy result tables and JSON records the entries read: the comparison rule's inputs
    besides the file."""
    selectors = [entry["replicated"] for entry in load_reported(reported) if entry["replicated"]]
    tables = {s["table"] for s in selectors if "table" in s} | {PROBES_TABLE}
    records = {s["record"] for s in selectors if "record" in s}
    return sorted([f"results/{run}/{table}.csv" for table in tables] + [f"results/{run}/{r}.json" for r in records])


def replicated_value(frame: pd.DataFrame, selector: dict, name: str) -> float:
    """Our number for one entry; NaN when this run has no matching rows (e.g. a model left out)."""
    column = selector.get("column", "value")
    unknown = sorted((set(selector["where"]) | {column}) - set(frame.columns))
    if unknown:
        raise ValueError(f"{name}: table {selector['table']} has no column(s) {unknown}")
    rows = frame
    for column_name, value in selector["where"].items():
        rows = rows[rows[column_name].astype(str) == str(value)]
    if rows.empty:
        return float("nan")
    if selector["statistic"] == "value" and len(rows) != 1:
        raise ValueError(f"{name}: statistic 'value' needs exactly one row, found {len(rows)}")
    return float(rows[column].max())


def record_value(record: dict, selector: dict, name: str) -> float:
    """The number at the selector's dotted key of a JSON record; NaN where the record holds null
    (e.g. a correlation undefined over too few models)."""
    value = record
    for part in selector["key"].split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"{name}: record {selector['record']} has no key {selector['key']!r} (at {part!r})")
        value = value[part]
    if value is not None and not isinstance(value, (int, float)):
        raise ValueError(f"{name}: {selector['record']}: {selector['key']} is not a number")
    return float("nan") if value is None else float(value)


def _ours(selector: dict | None, tables: dict, name: str) -> float:
    if selector is None:
        return float("nan")
    if "record" in selector:
        return record_value(tables[selector["record"]], selector, name)
    return replicated_value(tables[selector["table"]], selector, name)


def compare(entries: list[dict], tables: dict[str, pd.DataFrame | dict]) -> pd.DataFrame:
    """`tables`: each result table (a frame) and JSON record (a dict) by its name under results/{run}."""
    records = []
    for entry in entries:
        selector = entry["replicated"]
        ours = _ours(selector, tables, entry["id"])
        paper = float("nan") if entry["reported"] is None else float(entry["reported"])
        records.append({
            "id": entry["id"],
            "quantity": entry["quantity"],
            "source": entry["source"],
            "paper": paper,
            "replication": ours,
            "difference": ours - paper,
            "status": _status(entry, ours),
        })
    return pd.DataFrame.from_records(records)


def _status(entry: dict, ours: float) -> str:
    if entry["replicated"] is None:
        return "not replicated by a rule yet"
    if pd.isna(ours):
        return "no matching rows in this run"
    return "compared" if entry["reported"] is not None else "not reported by the paper"


def write(
    reported: str | Path, stem: str | Path, run: str, scale: str, pairing: str | dict | None = None
) -> None:
    """`pairing` (imagekv.pairing): the footer says which MLM has no public encoder of its own."""
    entries = load_reported(reported)
    paths = result_tables(reported, run)
    tables = {}
    for path in paths:  # the probe results with their tidy columns; the interventions' tables as they are
        name = table_name(path, run)
        if path.endswith(".json"):
            tables[name] = read_json(path)
        else:
            tables[name] = read_results(path) if name == PROBES_TABLE else read_table(path)
    provenance = Provenance.from_results(tables[PROBES_TABLE], run, scale, pairing=parse_pairing(pairing))
    write_table(compare(entries, tables), stem, CAPTION, provenance)
