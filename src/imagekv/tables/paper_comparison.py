"""The numbers the paper reports against ours, with the difference (config/paper_reported.yaml).

Each entry of the file names the paper's number (or null when it could not be read), where in the
paper it comes from, and which rows of one of our tidy result tables give the same quantity. The
table lists every entry, so the unknown ones stay visible as such.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from imagekv.figures.style import Provenance
from imagekv.pairing import parse as parse_pairing
from imagekv.results import COLUMNS, read_results, read_table
from imagekv.tables import write_table

CAPTION = "Numbers reported by the paper against this replication (fractions; difference = replication - paper)"
ENTRY_KEYS = {"id", "quantity", "source", "reported", "replicated"}
SELECTOR_KEYS = {"table", "statistic", "where", "column"}
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
    """The tidy result tables the entries read: the comparison rule's inputs besides the file."""
    tables = {entry["replicated"]["table"] for entry in load_reported(reported) if entry["replicated"]} | {PROBES_TABLE}
    return [f"results/{run}/{table}.csv" for table in sorted(tables)]


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


def compare(entries: list[dict], tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    records = []
    for entry in entries:
        selector = entry["replicated"]
        ours = float("nan") if selector is None else replicated_value(tables[selector["table"]], selector, entry["id"])
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
        tables[name] = read_results(path) if name == PROBES_TABLE else read_table(path)
    provenance = Provenance.from_results(tables[PROBES_TABLE], run, scale, pairing=parse_pairing(pairing))
    write_table(compare(entries, tables), stem, CAPTION, provenance)
