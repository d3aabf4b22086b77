"""Config validation against workflow/schemas/config.schema.yaml, and stable hashes of specs.

Snakemake's own `validate` reports the first schema error in jsonschema's words; this one names the
offending key as a dotted path (`probes.fewshot_seg.shots`) so a typo is found at once. Config files
are also read strictly (`check_config_file`): UTF-8 only, and a key given twice in one mapping is an
error (YAML loaders silently keep the last one).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
# libyaml's parser where PyYAML has it (PyPI's PyYAML wheels ship it): several times faster to read (every
# Snakemake run, a no-op too, reads the config and the schema). It refuses a few escapes the pure
# parser accepts (a lone surrogate): still an error naming the file, line and column.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    """A config value that does not match the schema; the message names the key (and file)."""


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(SAFE_LOADER):
    """A safe loader refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict = {}
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if key in first_line:
                raise _DuplicateKey(f"line {line}: key {key!r} is given twice (first on line {first_line[key]})")
            first_line[key] = line
        return super().construct_mapping(node, deep)


def check_config_file(path: str | Path) -> dict:
    """The config at `path`, read strictly: UTF-8, valid YAML, no duplicate keys."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 (byte {error.start}: {error.reason}); save the config as UTF-8"
        ) from error
    try:
        return copy.deepcopy(_parse_strictly(text))
    except (yaml.YAMLError, _DuplicateKey) as error:
        raise ConfigError(f"{path}: {error}") from error


@functools.lru_cache(maxsize=8)
def _parse_strictly(text: str) -> Any:
    """Parsed once per text: a Snakemake run reads the smoke config twice (the Snakefile, then
    common.smk); callers get copies, so the cached value never changes."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader


def merge_configs(configs: list[dict]) -> dict:
    """Later configs' keys over earlier ones', nested mappings merged key by key (as Snakemake
    merges --configfile files)."""
    merged: dict = {}
    for config in configs:
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge_configs([merged[key], value])
            else:
                merged[key] = value
    return merged


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader


def validate_config(config: dict, schema: dict | None = None) -> None:
    """Raise ConfigError listing every problem, each with the dotted key it concerns."""
    validator = jsonschema.Draft202012Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors] + [f"  {key}: not encodable as UTF-8" for key in _unencodable(config)]
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))


def _unencodable(value: Any, path: str = "") -> list[str]:
    """Dotted keys of strings (keys or values) UTF-8 cannot encode: lone surrogates from escapes."""
    if isinstance(value, dict):
        return [
            bad
            for key, item in value.items()
            for bad in _unencodable(key, path) + _unencodable(item, _join(path, str(key)))
        ]
    if isinstance(value, list):
        return [bad for index, item in enumerate(value) for bad in _unencodable(item, _join(path, str(index)))]
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [path or "<top level>"]
    return []


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return "\n".join(f"  {_join(path, key)}: unknown key" for key in extra)
    if error.validator == "maxLength":  # jsonschema's message repeats the whole value
        return f"  {path}: {len(error.instance)} characters, more than the {error.validator_value} allowed"
    return f"  {path or '<top level>'}: {error.message}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(spec: Any) -> str:
    """First 12 hex digits of the SHA-256 of the canonical JSON: the `config_hash` of result rows."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:12]
