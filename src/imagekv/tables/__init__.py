"""Paper tables, each written as CSV, Markdown and LaTeX with a provenance footer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagekv.io import atomic_path, write_text
from imagekv.labels import SMOKE_MARK, Provenance

TABLE_FORMATS = ("csv", "md", "tex")


def write_table(frame: pd.DataFrame, stem: str | Path, caption: str, provenance: Provenance) -> None:
    """Write `stem`.csv / .md / .tex; numbers are formatted once here so all three agree."""
    shown = frame.map(_format_cell)
    notes = [provenance.footer()] + ([SMOKE_MARK] if provenance.scale == "smoke" else [])
    with atomic_path(f"{stem}.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
    write_text(f"{stem}.md", _markdown(shown, caption, notes))
    write_text(f"{stem}.tex", _latex(shown, caption, notes))


def _format_cell(value) -> str:
    if isinstance(value, float):
        return "–" if pd.isna(value) else f"{value:.3f}"
    return str(value)


def _markdown(frame: pd.DataFrame, caption: str, notes: list[str]) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in frame.astype(str).itertuples(index=False)]
    return "\n".join([f"**{caption}**", "", header, rule, *body, "", *(f"_{n}_  " for n in notes)]) + "\n"


def _latex(frame: pd.DataFrame, caption: str, notes: list[str]) -> str:
    def escape(text: str) -> str:
        for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            text = text.replace(char, repl)
        return text

    cols = "l" * len(frame.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{escape(caption)}}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(escape(c) for c in frame.columns) + r" \\",
        r"\midrule",
        *(" & ".join(escape(str(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
        *(rf"\par\footnotesize {escape(n)}" for n in notes),
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
