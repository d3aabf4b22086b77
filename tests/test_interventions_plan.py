"""The intervention jobs' plan and runner logic: which jobs exist, what each blocking condition blocks,
the accuracy table with its paired differences, and the key-variance and read-out rows."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
import yaml

from imagekv import plan
from imagekv.config import ConfigError, validate_config
from imagekv.datasets.schema import BlinkItem
from imagekv.datasets.synthetic import write_synthetic
from imagekv.interventions import blink_accuracy, blink_run, key_variance_run, not_surfaced_run
from imagekv.interventions.key_variance import KeyStatistics, KeyVarianceConfig
from imagekv.interventions.multiple_choice import AnswerLayout, question_text
from imagekv.results import read_table
from workflow_runs import ROOT, failure_details, snakemake


@pytest.fixture(scope="module")
def smoke():
    with open("config/config.yaml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_the_smoke_config_runs_every_stage_and_the_schema_is_strict(smoke):
    validate_config(smoke)
    assert plan.interventions(smoke) is smoke["interventions"]
    bad = copy.deepcopy(smoke)
    bad["interventions"]["blocking"]["tau"] = 0.1
    with pytest.raises(ConfigError, match="interventions.blocking.tau: unknown key"):
        validate_config(bad)
    without = {k: v for k, v in smoke.items() if k != "interventions"}
    assert plan.interventions(without) is None


def test_missing_datasets_and_prefixes_are_named(smoke):
    config = copy.deepcopy(smoke)
    del config["datasets"]["coco_pool"]
    with pytest.raises(KeyError, match="interventions.key_variance.dataset"):
        plan.interventions(config)
    config = copy.deepcopy(smoke)
    config["interventions"]["prefix"]["prefixes"] = ["task", "elsewhere"]
    with pytest.raises(KeyError, match="elsewhere"):
        plan.interventions(config)


def test_the_prefix_job_of_each_mlm_reads_every_prefix_store_of_its_tasks(smoke):
    inputs = plan.prefix_probes_inputs(smoke, "qwen2_5_vl")
    assert "results/smoke/qwen2_5_vl/refcoco/features/neutral" in inputs
    assert "results/smoke/qwen2_5_vl/msrc/features/task" in inputs  # every probe, not only T3/T4
    assert "results/smoke/qwen2_5_vl/imagenet_s/item_features/find" in inputs
    assert "results/smoke/qwen2_5_vl/refcoco/item_features/none" in inputs  # the in-context baseline


def test_job_specs_hold_what_their_job_reads(smoke):
    spec = plan.blink_spec(smoke, "llava_next")
    assert spec["dataset_root"] == "data/synthetic/blink" and spec["model_cfg"] == smoke["models"]["llava_next"]
    # the bootstrap settings belong to the collecting job: changing them must not rerun the model
    assert "bootstrap_resamples" not in spec["params"]
    assert plan.key_variance_features(smoke, "qwen2_5_vl") == "results/smoke/qwen2_5_vl/coco_pool/features/none"
    assert set(plan.key_variance_spec(smoke, "qwen2_5_vl")["params"]) == {
        "tau", "tau_sweep", "cosine_threshold", "ell0_fraction", "calibration_resamples", "calibration_seed"}
    inputs = plan.not_surfaced_inputs(smoke)
    assert "results/smoke/llava_onevision/blink/features/none" in inputs
    assert "results/smoke/llava_onevision/interventions/blink_answers.csv" in inputs


def test_qwen_answers_for_e2_and_e6_at_native_resolution_blocking_at_its_fixed_grid(smoke):
    """SPEC E4: only the blocking run forces Qwen2.5-VL to the fixed grid, with its own unblocked
    baseline there; E6 and E2 read its answers at native resolution."""
    blocking = plan.blink_spec(smoke, "qwen2_5_vl")
    assert blocking["model_cfg"]["resolution"] == "fixed" and "answers" not in blocking["model_cfg"]
    assert plan.BASELINE_CONDITION in blocking["params"]["conditions"]  # blocking's own baseline
    own = plan.perception_answers_spec(smoke, "qwen2_5_vl")
    assert own["model_cfg"]["resolution"] == "native" and own["params"]["conditions"] == [plan.BASELINE_CONDITION]
    native = "results/smoke/qwen2_5_vl/interventions/blink_perception_answers.csv"
    fixed = "results/smoke/qwen2_5_vl/interventions/blink_answers.csv"
    assert plan.answer_override_models(smoke) == ["qwen2_5_vl"]
    assert plan.not_surfaced_spec(smoke)["models"]["qwen2_5_vl"]["answers"] == native
    inputs = plan.not_surfaced_inputs(smoke)
    assert native in inputs and fixed not in inputs
    # E2's perception score: the collected accuracy of the same answers (the perception_accuracy rule)
    assert plan.perception_answer_inputs(smoke) == [
        "results/smoke/llava_next/interventions/blink_answers.csv",
        "results/smoke/llava_onevision/interventions/blink_answers.csv",
        native,
    ]
    # the override touches neither extraction nor the stores E6 reads
    assert "answers" not in plan.extraction_spec(smoke, "qwen2_5_vl", "blink", "none")["model_cfg"]
    plain = copy.deepcopy(smoke)
    del plain["models"]["qwen2_5_vl"]["answers"]
    assert plan.extraction_spec(plain, "qwen2_5_vl", "blink", "none") == plan.extraction_spec(
        smoke, "qwen2_5_vl", "blink", "none")
    assert plan.perception_answers(plain, "qwen2_5_vl") == fixed


def test_the_workflow_scores_e2_on_the_native_answers_and_blocking_on_its_own(smoke):
    dry = snakemake(["-n", "--forceall", "--printshellcmds", "results/smoke/interventions/correlation.json",
                     "paper_tables/smoke/blocking.csv"], ROOT, timeout=300)
    assert dry.returncode == 0, failure_details(dry)
    commands = dry.stdout.splitlines()
    correlation = next(line for line in commands if "imagekv correlation" in line)
    assert "--accuracy results/smoke/interventions/perception_accuracy.csv" in correlation
    perception = next(line for line in commands if "imagekv blink-accuracy" in line and "perception_accuracy" in line)
    assert "qwen2_5_vl/interventions/blink_perception_answers.csv" in perception
    assert "qwen2_5_vl/interventions/blink_answers.csv" not in perception
    blocking = next(line for line in commands if "imagekv blink-accuracy" in line and "/blink_accuracy.csv" in line)
    assert "qwen2_5_vl/interventions/blink_answers.csv" in blocking and "perception" not in blocking


def test_e2_reads_the_blocking_run_for_another_condition_and_only_its_tasks_probes(smoke):
    """E2's default is each MLM's own unblocked answers on every task whose projection is probed;
    another condition reads the blocking run's accuracy, and must be one it runs."""
    default = plan.correlation_inputs(smoke)
    assert default["accuracy"] == "results/smoke/interventions/perception_accuracy.csv"
    assert plan.correlation_spec(smoke)["tasks"] == sorted(set(smoke["probes"]) - set(plan.TEXT_QUERY_TASKS))
    controls = copy.deepcopy(smoke)
    controls["interventions"]["correlation"] |= {"condition": "flagged", "tasks": ["temporal_corr"]}
    validate_config(controls)
    chosen = plan.correlation_inputs(controls)
    assert chosen["accuracy"] == "results/smoke/interventions/blink_accuracy.csv"
    assert chosen["probes"] == sorted(f"results/smoke/{model}/davis/probe/none/{representation}.csv"
                                      for model in smoke["models"] for representation in ("projection", "values"))
    assert plan.correlation_spec(controls)["condition"] == "flagged"
    controls["interventions"]["blocking"]["conditions"] = ["none", "random"]
    with pytest.raises(KeyError, match="interventions.correlation.condition is 'flagged'"):
        plan.correlation_inputs(controls)
    controls["interventions"]["correlation"]["tasks"] = ["semantic_seg"]
    with pytest.raises(KeyError, match=r"interventions.correlation.tasks names \['semantic_seg'\]"):
        plan.correlation_spec(controls)


def test_the_native_answers_file_records_the_setting_it_was_answered_in(smoke, tmp_path):
    spec = plan.perception_answers_spec(smoke, "qwen2_5_vl") | {
        "dataset_root": str(tmp_path / "blink"), "device": "cpu", "dtype": "float32"}
    spec["dataset_cfg"] = spec["dataset_cfg"] | {"items_per_subtask": 1, "derived_dir": str(tmp_path / "derived")}
    write_synthetic("blink", tmp_path / "blink", spec["dataset_cfg"], seed=0)
    output = tmp_path / "answers.csv"
    blink_run.blink_answers(spec, None, output)
    answers = read_table(output)
    assert set(answers["condition"]) == {"none"}
    assert {json.loads(cfg)["resolution"] for cfg in answers["model_cfg"]} == {"native"}
    blocking = spec | {"params": spec["params"] | {"conditions": ["none", "flagged"]}}
    with pytest.raises(ValueError, match="needs the model's flags"):
        blink_run.blink_answers(blocking, None, tmp_path / "blocked.csv")


FLAGS = {"layers": [0, 1, 2, 3], "ell0": 2, "flagged_positions": [[5], [], [0, 3], [1]]}


def test_flagged_positions_from_ell0_or_in_a_band():
    from_ell0 = key_variance_run.flagged_layout_positions(FLAGS, "from_ell0")
    assert {k: v.tolist() for k, v in from_ell0.items()} == {2: [0, 3], 3: [1]}
    band = key_variance_run.flagged_layout_positions(FLAGS, [0, 2])
    assert {k: v.tolist() for k, v in band.items()} == {0: [5], 2: [0, 3]}
    assert key_variance_run.flagged_layout_positions(FLAGS | {"ell0": None}, "from_ell0") == {}


# Two images of 6 tokens each at positions 10..15 and 20..25; their 4-position layouts sit at token
# offsets 0..3 (a base view first in the image's run).
LAYOUT = AnswerLayout(answer_position=40, query_start=30, image_starts=(10, 20), image_lengths=(6, 6))
OFFSETS = [torch.arange(4), torch.arange(4)]
FLAGGED = {2: torch.tensor([0, 3]), 3: torch.tensor([1])}


def test_each_condition_blocks_what_it_says():
    assert blink_run.block_rule("none", FLAGGED, OFFSETS, seed=0) is None
    flagged = blink_run.block_rule("flagged", FLAGGED, OFFSETS, seed=0)(LAYOUT)
    assert {k: v.tolist() for k, v in flagged.items()} == {2: [10, 13, 20, 23], 3: [11, 21]}
    random = blink_run.block_rule("random", FLAGGED, OFFSETS, seed=0)(LAYOUT)
    grid = {10, 11, 12, 13, 20, 21, 22, 23}
    assert {k: len(v) for k, v in random.items()} == {2: 4, 3: 2}
    assert all(set(v.tolist()) <= grid and len(set(v.tolist())) == len(v) for v in random.values())
    every = blink_run.block_rule("all_image", FLAGGED, OFFSETS, seed=0)(LAYOUT)
    assert {k: v.tolist() for k, v in every.items()} == {2: [*range(10, 16), *range(20, 26)],
                                                         3: [*range(10, 16), *range(20, 26)]}
    with pytest.raises(ValueError, match="unknown blocking condition"):
        blink_run.block_rule("everything", FLAGGED, OFFSETS, seed=0)


def test_the_answer_instruction_is_added_once():
    item = BlinkItem("q", "Art_Style", "Which?", ("x", "y"), "A", ("q/image_1",), prompt="Which?\n(A) x\n(B) y")
    assert question_text(item, "Answer now.") == "Which?\n(A) x\n(B) y\nAnswer now."
    ending = BlinkItem("q", "Art_Style", "Which?", ("x", "y"), "A", ("q/image_1",), prompt="Which?\nAnswer now.")
    assert question_text(ending, "Answer now.") == "Which?\nAnswer now."


def _answers(condition: str, correct: list[bool]) -> list[dict]:
    subtasks = ["Art_Style", "Art_Style", "Counting", "Counting"]
    return [
        {"model": "m", "condition": condition, "subtask": s, "item_id": f"q{i}", "answer": "A",
         "choice": "A" if ok else "B", "correct": ok, "decoded": True, "generated_letter": "A" if ok else None}
        for i, (s, ok) in enumerate(zip(subtasks, correct))
    ]


def test_accuracy_per_subtask_with_the_paired_difference(tmp_path):
    answers = tmp_path / "answers.csv"
    pd.DataFrame(_answers("none", [True, False, False, False]) + _answers("flagged", [True, True, False, True])
                 ).to_csv(answers, index=False)
    output = tmp_path / "accuracy.csv"
    blink_accuracy.blink_accuracy({"baseline": "none", "resamples": 200, "seed": 0}, [answers], output)
    table = pd.read_csv(output).set_index(["condition", "subtask"])
    assert table.loc[("none", "Art_Style"), "accuracy"] == 0.5
    assert table.loc[("none", "overall"), "accuracy"] == 0.25
    assert table.loc[("flagged", "overall"), "accuracy"] == 0.75
    assert table.loc[("flagged", "overall"), "delta"] == pytest.approx(0.5)
    assert table.loc[("flagged", "Counting"), "delta"] == pytest.approx(0.5)
    assert table.loc[("flagged", "subtask_mean"), "delta"] == pytest.approx((1.0 + 0.5) / 2 - (0.5 + 0.0) / 2)
    assert table.loc[("flagged", "overall"), "ci_low"] <= 0.5 <= table.loc[("flagged", "overall"), "ci_high"]
    assert pd.isna(table.loc[("none", "overall"), "delta"])
    assert table.loc[("flagged", "overall"), "greedy_accuracy"] == 0.75


def test_key_variance_rows_per_layer_and_threshold():
    # 3 images, 1 layer, 4 positions: position 0 is the same key in every image.
    keys = torch.randn(3, 1, 4, 2, generator=torch.Generator().manual_seed(0))
    keys[:, :, 0] = torch.tensor([1.0, 2.0])
    stats = KeyStatistics([5])
    stats.update(keys, values=torch.ones(3, 1, 4, 2))
    cfg = KeyVarianceConfig(tau=0.1, tau_sweep=(0.1,), cosine_threshold=0.95)
    rows = key_variance_run.key_variance_rows(stats.result(), cfg, "m", "2x2").set_index(["metric", "threshold"])
    assert rows.loc[("flagged_fraction", 0.1), "value"] == 0.25
    assert rows.loc[("flagged_fraction", 0.1), "layer"] == 5
    assert rows.loc[("cosine_flagged_fraction", 0.95), "value"] >= 0.25
    assert rows.loc[("value_norm_flagged", 0.1), "value"] == pytest.approx(2**0.5)


class ValueStore:
    """Value tokens [layers, rows, cols, dim] by image id, as a FeatureStore serves them."""

    def __init__(self, values: dict[str, torch.Tensor]):
        self.values, self.layers = values, (0, 1)

    def features(self, image_id: str, representation: str) -> torch.Tensor:
        assert representation == "values"
        return self.values[image_id]


def test_the_readout_picks_the_candidate_like_the_reference():
    ref, alike, other = torch.tensor([1.0, 0.0]), torch.tensor([0.9, 0.1]), torch.tensor([0.0, 1.0])

    def tokens(vector):  # the same embedding at both layers, on a 1x1 grid
        return vector.expand(2, 1, 1, 2).clone()

    values = {"a/1": tokens(ref), "a/2": tokens(other), "a/3": tokens(alike),
              "b/1": tokens(ref), "b/2": tokens(alike), "b/3": tokens(other)}
    items = [BlinkItem("a", "Art_Style", "?", ("x", "y"), "B", ("a/1", "a/2", "a/3")),
             BlinkItem("b", "Art_Style", "?", ("x", "y"), "A", ("b/1", "b/2", "b/3"))]
    report = not_surfaced_run.subtask_report(ValueStore(values), items, ["A", "A"], "mean", split_seed=0)
    assert report["readout_accuracy"] == [1.0, 1.0]
    assert report["model_accuracy"] == 0.5
    assert report["oracle"]["not_surfaced"] == 0.5  # item a: read-out right, model wrong
    with pytest.raises(ValueError, match="reference image plus one image per option"):
        not_surfaced_run.subtask_report(ValueStore(values), [BlinkItem("c", "Art_Style", "?", ("x",) * 3, "A", ("a/1",))],
                                ["A"], "mean", split_seed=0)
