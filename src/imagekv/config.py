"""Config validation against workflow/schemas/config.schema.yaml, and stable hashes of specs.

Snakemake's own `validate` reports the first schema error in jsonschema's words; this one names the
offending key as a dotted path (`probes.fewshot_seg.shots`) so a typo is found at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that does not match the schema; the message names the key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def validate_config(config: dict, schema: dict | None = None) -> None:
    """Raise ConfigError listing every problem, each with the dotted key it concerns."""
    validator = jsonschema.Draft202012Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(_describe(e) for e in errors))


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return "\n".join(f"  {_join(path, key)}: unknown key" for key in extra)
    return f"  {path or '<top level>'}: {error.message}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(spec: Any) -> str:
    """First 12 hex digits of the SHA-256 of the canonical JSON: the `config_hash` of result rows."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:12]
