"""The controls run (issue 18): the planted twins' effects are recovered through the workflow, and
breaking the experiment that should recover one makes its control fail (mutation checks)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from imagekv import plan
from imagekv.cli import main as imagekv_cli
from imagekv.config import merge_configs
from imagekv.extract import extract_store
from imagekv.interventions.blink_accuracy import blink_accuracy
from imagekv.interventions.blink_run import blink_answers
from imagekv.interventions.correlation import projection_correlation
from imagekv.interventions.correlation_run import correlation
from imagekv.interventions.controls import (
    ACROSS_MODELS,
    CORRELATIONS,
    NEUTRAL_PREFIX,
    PREFIX_CONTROL_TASKS,
    TASK_PREFIX,
    blocking_rows,
    correlation_rows,
    detection_rows,
    not_surfaced_rows,
    prefix_rows,
    probe_rows,
    wilson_interval,
)
from imagekv.interventions.key_variance_run import key_variance
from imagekv.interventions.prefix import prefix_gains, prefix_probes
from imagekv.io import read_json, write_json
from imagekv.models import planted
from imagekv.models.planted import NOT_SURFACED_LAYER, NULL_MODEL, PLANTED_OFFSETS
from imagekv.results import read_results, read_table, write_table_rows
from workflow_runs import ROOT, fresh_copy, snakemake

pytestmark = pytest.mark.slow

MUTATED_MODEL = "llava_next"
WRONG_LAYER = 2  # an E6 read-out layer without the colour code (imagekv.models.planted)
PREFIX_TASK = "referring_seg"  # the E5 task whose task-prefix store a mutation re-extracts (T4)
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
    expected |= {(model, f"best layer: {task}") for model in config["models"] if model != NULL_MODEL
                 for task in plan.CONTROL_PROBE_TASKS}
    expected |= {(NULL_MODEL, f"null score: {task}") for task in plan.CONTROL_PROBE_TASKS}
    expected |= {(model, f"Art_Style rate, layer {NOT_SURFACED_LAYER}") for model in config["models"]}  # E6
    expected |= {(model, f"{prefix} gain: {task}") for model in config["models"]
                 for prefix in (TASK_PREFIX, NEUTRAL_PREFIX) for task in PREFIX_CONTROL_TASKS}  # E5
    expected |= {(ACROSS_MODELS, f"{label} (n = 3): projection vs flagged acc.")
                 for label in CORRELATIONS.values()}  # E2
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


@pytest.mark.parametrize(
    ("mutation", "model"),
    [("plant_elsewhere", "qwen2_5_vl"), ("null_informed", NULL_MODEL)],
)
def test_a_moved_or_missing_probe_plant_fails_its_control(controls_run, tmp_path, monkeypatch, mutation, model):
    """Mutation of the probes' plant, re-extracted and re-probed: the information planted in layer 2
    (KV head 1; layer 0 holds E6's colour code) instead of INFO_LAYER moves the best layer found
    there, and a null model whose INFO_LAYER keeps
    its information scores above the noise bound's tolerance."""
    copy, config = controls_run
    monkeypatch.chdir(copy)
    if mutation == "plant_elsewhere":
        monkeypatch.setattr(planted, "INFO_LAYER", 2)
    else:
        monkeypatch.setattr(planted, "NULL_MODEL", "no model")
    rows = []
    for task in plan.CONTROL_PROBE_TASKS:
        dataset = config["probes"][task]["dataset"]
        extract_store(plan.extraction_spec(config, model, dataset, "none"), tmp_path / task)
        spec = plan.probe_spec(config, model, dataset, "none", "values")
        imagekv_cli(["probe", "--spec", json.dumps(spec), "--features", str(tmp_path / task),
                     "--output", str(tmp_path / f"{task}.csv"), "--threads", "1"])
        others = [path for path in plan.control_probe_inputs(config) if f"/{model}/" not in path]
        results = pd.concat([read_results(path) for path in [tmp_path / f"{task}.csv", *others]], ignore_index=True)
        rows += [row for row in probe_rows(results) if row["model"] == model]
    assert rows and not any(row["pass"] for row in rows)
    if mutation == "plant_elsewhere":
        assert {row["recovered"] for row in rows} == {2.0}  # the planted layer 2, not INFO_LAYER


def test_probe_layers_read_one_off_fail_their_control(controls_run, monkeypatch):
    """Mutation: the run's probe results with each MLM layer labelled one deeper (a read-out at the
    wrong layer): every best-layer control fails, the null control does not depend on layers."""
    copy, config = controls_run
    monkeypatch.chdir(copy)
    results = pd.concat([read_results(path) for path in plan.control_probe_inputs(config)], ignore_index=True)
    mlm = results["model"].isin(config["models"])
    results.loc[mlm, "layer"] += 1
    rows = probe_rows(results)
    assert not any(row["pass"] for row in rows if row["control"].startswith("best layer"))
    assert all(row["pass"] for row in rows if row["control"].startswith("null score"))


def test_readout_at_a_layer_without_the_plant_fails_its_control(controls_run):
    """Mutation: the E6 read-out at layer WRONG_LAYER, whose image values are noise (KV head 1) and
    E4's input-agnostic values (KV head 0): it misses questions the model gets wrong, and the rate
    misses the planted one (in the controls run at layer 2 it does for every model: 0 to 2 of 4 right)."""
    copy, _ = controls_run
    frame = read_table(copy / plan.intervention_path("controls", "not_surfaced.csv"))
    rows = {row["model"]: row for row in not_surfaced_rows(frame, layer=WRONG_LAYER)}
    assert not rows[MUTATED_MODEL]["pass"], rows[MUTATED_MODEL]


def _prefix_control_rows(config: dict, units: pd.DataFrame, tmp_path) -> dict:
    """The E5 control rows, by control, of the per-unit probe scores `units` of one model."""
    write_table_rows(units, tmp_path / "units.csv", ["model", "task", "prefix", "unit", "layer"])
    prefix_gains(plan.prefix_gains_spec(config), [tmp_path / "units.csv"], tmp_path / "gains.csv")
    return {row["control"]: row for row in prefix_rows(read_table(tmp_path / "gains.csv"))}


def test_a_task_prefix_without_the_plant_fails_its_control(controls_run, tmp_path, monkeypatch):
    """Mutation: the prefix plant switched off (PREFIX_GAIN = 0) and the T4 task-prefix store
    re-extracted and re-probed: the named object's image values get no direction, the gain is gone."""
    copy, config = controls_run
    monkeypatch.chdir(copy)
    monkeypatch.setattr(planted, "PREFIX_GAIN", 0.0)
    dataset = config["probes"][PREFIX_TASK]["dataset"]
    extract_store(plan.item_extraction_spec(config, MUTATED_MODEL, dataset, TASK_PREFIX), tmp_path / "store")
    spec = plan.prefix_probes_spec(config, MUTATED_MODEL)
    task = spec["tasks"][PREFIX_TASK]
    conditions = [c | {"features": str(tmp_path / "store")} for c in task["conditions"] if c["label"] == TASK_PREFIX]
    spec["tasks"] = {PREFIX_TASK: task | {"conditions": conditions}}
    prefix_probes(spec, tmp_path / "rows.csv", tmp_path / "mutated.csv")
    units = read_table(plan.intervention_path("controls", "prefix_units.csv", MUTATED_MODEL))
    replaced = (units["task"] == PREFIX_TASK) & (units["prefix"] == TASK_PREFIX)
    units = pd.concat([units[~replaced], read_table(tmp_path / "mutated.csv")], ignore_index=True)
    rows = _prefix_control_rows(config, units, tmp_path)
    assert not rows[f"{TASK_PREFIX} gain: {PREFIX_TASK}"]["pass"], rows[f"{TASK_PREFIX} gain: {PREFIX_TASK}"]
    assert rows[f"{TASK_PREFIX} gain: semantic_seg"]["pass"]  # the store left as the run wrote it


def test_a_neutral_prefix_naming_the_object_fails_its_control(controls_run, tmp_path):
    """Mutation: the neutral condition scored on the task prefix's stores (a "neutral" prefix that
    names each queried object, so carries its direction): a gain, and the neutral control fails."""
    copy, config = controls_run
    units = read_table(copy / plan.intervention_path("controls", "prefix_units.csv", MUTATED_MODEL))
    named = units[units["prefix"] == TASK_PREFIX].assign(prefix=NEUTRAL_PREFIX)
    units = pd.concat([units[units["prefix"] != NEUTRAL_PREFIX], named], ignore_index=True)
    rows = _prefix_control_rows(config, units, tmp_path)
    assert not any(rows[f"{NEUTRAL_PREFIX} gain: {task}"]["pass"] for task in PREFIX_CONTROL_TASKS)


def test_perception_ordered_against_the_projection_fails_its_control(controls_run, tmp_path, monkeypatch):
    """Mutation: the BLINK answers re-run with the planted qualities reversed (the probes left as the
    run wrote them): perception falls as projection quality rises, both correlations turn negative."""
    copy, config = controls_run
    monkeypatch.chdir(copy)
    qualities = planted.PROJECTION_QUALITY
    ranked = sorted(qualities, key=qualities.get)
    monkeypatch.setattr(planted, "PROJECTION_QUALITY", dict(zip(ranked, reversed([qualities[m] for m in ranked]))))
    answers = []
    for model in config["models"]:
        spec = plan.blink_spec(config, model)
        spec["params"] = spec["params"] | {"conditions": ["none", "flagged"]}
        answers.append(tmp_path / f"{model}.csv")
        blink_answers(spec, plan.intervention_path("controls", "key_variance.json", model), answers[-1])
    blink_accuracy(plan.blink_accuracy_spec(config), answers, tmp_path / "accuracy.csv")
    correlation(plan.correlation_spec(config), plan.correlation_inputs(config)["probes"], tmp_path / "accuracy.csv",
                tmp_path / "correlation.json")
    rows = correlation_rows(read_json(tmp_path / "correlation.json"))
    assert len(rows) == 2 and not any(row["pass"] for row in rows), rows


def test_e2_control_needs_a_positive_defined_correlation():
    """correlation_rows on small records: a positive correlation passes, a negative or undefined one
    (constant perception) fails; the row names the condition scored and has no interval."""
    projection = {"a": {"t": 0.1}, "b": {"t": 0.2}, "c": {"t": 0.3}}
    best = {model: {"t": 0.5} for model in projection}

    def rows(perception: dict) -> list[dict]:
        record = {"spec": {"condition": "flagged"}, **projection_correlation(projection, best, perception)}
        return correlation_rows(record)

    following = rows({"a": 0.5, "b": 0.6, "c": 0.9})
    assert all(row["pass"] for row in following) and len(following) == 2
    assert following[0]["control"] == "Pearson r (n = 3): projection vs flagged acc."
    assert all(pd.isna(row["ci_low"]) and pd.isna(row["ci_high"]) for row in following)
    assert not any(row["pass"] for row in rows({"a": 0.9, "b": 0.6, "c": 0.5}))
    constant = rows({"a": 0.5, "b": 0.5, "c": 0.5})
    assert not any(row["pass"] for row in constant) and all(pd.isna(row["recovered"]) for row in constant)


def test_the_prefix_plant_names_the_synthetic_objects():
    """E5's plant reads the object a text names (the RefCOCO twin's expressions, the ImageNet-S
    class names the T3 queries and "Find: {text}." hold), and none in the neutral prefix."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text(encoding="utf-8"))
    assert planted.named_object("Find: the red circle on the left.\n") == "red circle"
    assert planted.named_object("left red circle") == "red circle"
    assert planted.named_object("Find: siamese cat.\n") == "siamese cat"
    assert planted.named_object(config["prefixes"][NEUTRAL_PREFIX]) is None
    red = planted.named_colours()["red circle"]
    colours = torch.tensor([red, [c * 0.78 for c in red], [0.5, 0.5, 0.5], planted.named_colours()["lemon"]])
    assert planted.object_tokens(colours, red).tolist() == [True, True, False, False]


def test_wilson_interval():
    """Wilson (1927): 0 of 4 gives [0, z^2 / (n + z^2)]; an observed rate lies inside its interval."""
    low, high = wilson_interval(0.0, 4)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(1.959964**2 / (4 + 1.959964**2))
    assert wilson_interval(1.0, 4)[1] == 1.0
    low, high = wilson_interval(0.75, 8)
    assert low < 0.75 < high
