import re
from pathlib import Path

import pytest
import yaml

from imagekv import plan
from imagekv.config import ConfigError, check_config_file, merge_configs, spec_hash, validate_config

ROOT = Path(__file__).resolve().parents[1]
# Each run's config files in --configfile order: the controls config is merged over the smoke config.
RUN_CONFIGS = {"smoke": ["config.yaml"], "paper": ["paper.yaml"], "controls": ["config.yaml", "controls.yaml"]}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("run", RUN_CONFIGS)
def test_shipped_configs_validate(run):
    validate_config(merge_configs([load(name) for name in RUN_CONFIGS[run]]))


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


# --- Config files read strictly, names that become paths, strings that reach jobs -------------


def test_a_key_given_twice_is_refused_naming_file_key_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("run: smoke\nextraction:\n  batch_size: 4\n  layers: all\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 5: key 'batch_size' is given twice \(first on line 3\)"):
        check_config_file(path)


def test_a_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 \(byte 8"):
        check_config_file(path)


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_read_strictly_as_snakemake_reads_them(path):
    assert check_config_file(path) == yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("a/../../x", "", r"prefixes: 'a/../../x' does not match"),
        ("..", "", r"prefixes: '..' does not match"),
        ("p" * 65, "", r"prefixes: 'p{65}' does not match"),
        ("long", "x" * 200_000, r"prefixes.long: 200000 characters, more than the 4096 allowed"),
        ("lone", "\ud800", r"prefixes.lone: not encodable as UTF-8"),
    ],
    ids=["path_escape", "dot_dot", "name_too_long", "value_too_long", "lone_surrogate"],
)
def test_prefixes_that_would_break_paths_or_jobs_are_named(name, value, message):
    config = load("config.yaml")
    config["prefixes"][name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_the_workflow_refuses_a_config_with_a_duplicate_key(tmp_path):
    """Through Snakemake: its own reader keeps the last value; the workflow stops and names the file."""
    from workflow_runs import fresh_copy, snakemake

    project = fresh_copy(tmp_path / "project")
    text = (ROOT / "config" / "config.yaml").read_text(encoding="utf-8")
    (project / "dup.yaml").write_text(text + "\nseed: 7\n", encoding="utf-8")
    result = snakemake(["--dry-run", "--configfile", "dup.yaml"], project, timeout=300)
    assert result.returncode != 0
    assert re.search(r"dup.yaml: line \d+: key 'seed' is given twice", result.stdout + result.stderr)


@pytest.mark.parametrize("path", ["config/config.yaml", "config/paper.yaml"])
def test_each_mlm_is_paired_with_its_own_encoders(path):
    """Issue 17.3: SigLIP for LLaVA-OneVision, CLIP ViT-L/14-336 for LLaVA-NeXT, and for Qwen2.5-VL
    only its own tower, with the reason written down; every MLM's tower is stored and probed."""
    config = yaml.safe_load((ROOT / path).read_text())
    pairing = plan.reference_pairing(config)
    assert {model: entry["references"] for model, entry in pairing.items()} == {
        "llava_onevision": ["siglip"], "llava_next": ["clip"], "qwen2_5_vl": [],
    }
    assert "no public pre-fine-tuning encoder" in pairing["qwen2_5_vl"]["note"]
    assert config["references"]["clip"]["checkpoint"] == "openai/clip-vit-large-patch14-336"
    for model in config["models"]:
        assert "tower" in plan.extraction_spec(config, model, "msrc", "none")["store"]
        assert plan.probe_path(config["run"], model, "msrc", "none", "tower") in plan.probe_targets(config)
        # the tower sees no text and no probe reads it elsewhere: not stored with a prefix, nor for E4/E6
        assert "tower" not in plan.extraction_spec(config, model, "imagenet_s", "task")["store"]
        assert "tower" not in plan.extraction_spec(config, model, "blink", "none")["store"]


def test_a_pairing_naming_an_unknown_reference_or_a_tower_on_the_crops_view_is_named():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    with pytest.raises(KeyError, match=r"pairing.llava_next.references names \['dinov2'\]"):
        plan.reference_pairing(config | {"pairing": {"llava_next": {"references": ["dinov2"]}}})
    crops = config | {"models": config["models"] | {"llava_next": config["models"]["llava_next"] | {"view": "crops"}}}
    with pytest.raises(ValueError, match="models.llava_next.view is crops"):
        plan.extraction_spec(crops, "llava_next", "msrc", "none")
