"""Job specs handed to `python -m imagekv` without the limit on one command-line argument.

Linux refuses a single argument over 128 KiB (MAX_ARG_STRLEN, 32 pages) with "Argument list too
long", and a run's prefixes alone can exceed it. A rule's params hold the spec as a `JobSpec`: a
string whose value is the canonical JSON, so Snakemake's params record and its between-workflow
cache key see the spec itself and rerun the job when it changes. Formatted into the shell command
it becomes `@FILE`, a content-addressed copy written then under `SPEC_FOLDER` (relative to the
working directory the jobs run in). The command line reads either form back with `read_spec`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from imagekv.io import write_text

SPEC_FOLDER = Path(".snakemake/imagekv_specs")


class JobSpec(str):
    """The spec as JSON; `format()` (how Snakemake builds a shell command) gives `@FILE` instead."""

    def __format__(self, format_spec: str) -> str:
        return format("@" + str(spec_file(str(self))), format_spec)


def spec_file(text: str, folder: Path = SPEC_FOLDER) -> Path:
    """The file holding `text`, named by its SHA-256, written once (equal specs share a file)."""
    data = text.encode("utf-8")
    path = folder / f"{hashlib.sha256(data).hexdigest()}.json"
    if not path.is_file() or path.read_bytes() != data:
        write_text(path, text)
    return path


def read_spec(value: str) -> str:
    """A `--spec` argument as JSON text: the JSON itself, or `@FILE` naming a file that holds it."""
    source, text = "--spec", value
    if value.startswith("@"):
        source = value[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read the job spec file {source}: {error}") from error
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: the job spec is not JSON ({error})") from error
    return text
