from pathlib import Path

import pytest
import yaml

from imagekv import plan
from imagekv.config import ConfigError, spec_hash, validate_config

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIGS = [ROOT / "config" / "config.yaml", ROOT / "config" / "paper.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    validate_config(yaml.safe_load(path.read_text()))


def test_unknown_key_is_named_with_its_path():
    config = load("config.yaml")
    config["models"]["llava_onevision"]["revison"] = "abc"
    with pytest.raises(ConfigError, match=r"models\.llava_onevision\.revison: unknown key"):
        validate_config(config)


def test_wrong_type_is_named_with_its_path():
    config = load("config.yaml")
    config["extraction"]["batch_size"] = "four"
    with pytest.raises(ConfigError, match=r"extraction\.batch_size: 'four' is not of type 'integer'"):
        validate_config(config)


def test_paper_and_smoke_runs_write_to_different_paths():
    smoke, paper = load("config.yaml"), load("paper.yaml")
    assert (smoke["run"], smoke["scale"]) == ("smoke", "smoke")
    assert paper["scale"] == "paper" and paper["run"] != smoke["run"]
    assert not set(plan.probe_targets(smoke)) & set(plan.probe_targets(paper))


def test_spec_hash_is_stable_and_order_free():
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})
