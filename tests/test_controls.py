"""The controls run (issue 18): the planted twins' effects are recovered through the workflow, and
breaking the experiment that should recover one makes its control fail (mutation checks)."""

from __future__ import annotations

import pytest
import yaml

from imagekv import plan
from imagekv.config import merge_configs
from imagekv.interventions.blink_run import blink_accuracy, blink_answers
from imagekv.interventions.controls import blocking_rows, detection_rows, not_surfaced_rows, wilson_interval
from imagekv.interventions.key_variance_run import key_variance
from imagekv.io import read_json, write_json
from imagekv.models.planted import NOT_SURFACED_LAYER, PLANTED_OFFSETS
from imagekv.results import read_table
from workflow_runs import fresh_copy, snakemake

pytestmark = pytest.mark.slow

MUTATED_MODEL = "llava_next"
# The controls config holds only what differs from the smoke config (Snakemake merges it over it).
CONTROLS_CONFIGS = ["config/config.yaml", "config/controls.yaml"]


@pytest.fixture(scope="module")
def controls_run(tmp_path_factory):
    """One `snakemake controls` in a fresh copy: the copy and its config."""
    copy = fresh_copy(tmp_path_factory.mktemp("controls") / "project")
    result = snakemake(["--cores", "1", "controls", "--configfile", *CONTROLS_CONFIGS], copy)
    assert result.returncode == 0, result.stderr[-4000:]
    return copy, merge_configs([yaml.safe_load((copy / path).read_text()) for path in CONTROLS_CONFIGS])


def test_every_control_passes(controls_run):
    copy, config = controls_run
    rows = read_table(copy / plan.intervention_path("controls", "controls.csv"))
    expected = {(model, control) for model in config["models"]
                for control in ("precision", "recall", "ell0", "flagged Δ accuracy", "random Δ accuracy")}
    expected |= {(model, f"Art_Style rate, layer {NOT_SURFACED_LAYER}") for model in config["models"]}  # E6
    assert set(zip(rows["model"], rows["control"])) == expected
    failing = rows[~rows["pass"].astype(bool)]
    assert failing.empty, failing.to_string()
    table = (copy / "paper_tables/controls/controls.md").read_text()
    assert "FAIL" not in table and table.count("| pass |") == len(rows) + 1  # the header names the column


def test_detector_with_tau_zero_fails_its_control(controls_run, tmp_path, monkeypatch):
    """Mutation: tau = 0 flags nothing (nu < 0 never holds), so the planted keys go unfound."""
    copy, config = controls_run
    monkeypatch.chdir(copy)
    spec = plan.key_variance_spec(config, MUTATED_MODEL)
    spec["params"] = spec["params"] | {"tau": 0.0, "tau_sweep": [0.0]}
    key_variance(spec, plan.key_variance_features(config, MUTATED_MODEL), tmp_path / "kv.json", tmp_path / "kv.csv")
    rows = {row["control"]: row for row in detection_rows(MUTATED_MODEL, read_json(tmp_path / "kv.json"))}
    assert not rows["recall"]["pass"] and not rows["ell0"]["pass"]


@pytest.mark.parametrize(
    "mutation",
    ["wrong_positions", "wrong_layers"],
)
def test_blocking_the_wrong_keys_fails_its_control(controls_run, tmp_path, monkeypatch, mutation):
    """Mutation: blocking other grid positions than the flagged ones, or the flagged positions in
    the layers before the planted ell0, leaves the misleading read in place: no gain."""
    copy, config = controls_run
    monkeypatch.chdir(copy)
    flags = read_json(plan.intervention_path("controls", "key_variance.json", MUTATED_MODEL))
    if mutation == "wrong_positions":
        flags["flagged_positions"] = [[p + 1 for p in positions] for positions in flags["flagged_positions"]]
        assert not set(flags["flagged_positions"][-1]) & set(PLANTED_OFFSETS)
        layers = config["interventions"]["blocking"]["layers"]
    else:
        flags["flagged_positions"] = [list(PLANTED_OFFSETS)] * len(flags["layers"])
        layers = [0, flags["ell0"] - 1]
    write_json(tmp_path / "flags.json", flags)
    spec = plan.blink_spec(config, MUTATED_MODEL)
    spec["params"] = spec["params"] | {"conditions": ["none", "flagged", "random"], "layers": layers}
    blink_answers(spec, tmp_path / "flags.json", tmp_path / "answers.csv")
    blink_accuracy(plan.blink_accuracy_spec(config), [tmp_path / "answers.csv"], tmp_path / "accuracy.csv")
    rows = {row["control"]: row for row in blocking_rows(read_table(tmp_path / "accuracy.csv"))}
    assert not rows["flagged Δ accuracy"]["pass"]
    assert rows["random Δ accuracy"]["pass"]


def test_readout_at_a_layer_without_the_plant_fails_its_control(controls_run):
    """Mutation: the E6 read-out at layer 0, where the plant leaves no image information, ties every
    candidate (right only where the answer is A): it misses questions the model gets wrong, and the
    rate misses the planted one."""
    copy, _ = controls_run
    frame = read_table(copy / plan.intervention_path("controls", "not_surfaced.csv"))
    rows = {row["model"]: row for row in not_surfaced_rows(frame, layer=0)}
    assert not rows[MUTATED_MODEL]["pass"], rows[MUTATED_MODEL]


def test_wilson_interval():
    """Wilson (1927): 0 of 4 gives [0, z^2 / (n + z^2)]; an observed rate lies inside its interval."""
    low, high = wilson_interval(0.0, 4)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(1.959964**2 / (4 + 1.959964**2))
    assert wilson_interval(1.0, 4)[1] == 1.0
    low, high = wilson_interval(0.75, 8)
    assert low < 0.75 < high
