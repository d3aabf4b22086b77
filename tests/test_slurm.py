"""One vertical slice of the smoke run (synthetic data -> GPU extraction -> CPU probe), submitted
through workflow/profiles/slurm to a one-node Slurm cluster on localhost. A slice, not the whole
run: one job of each kind on the path (CPU data and preflight jobs, a GPU extraction, a CPU probe),
as each job in a Slurm job costs a Snakemake start and the imports the warm worker saves locally. The
datasets only the preflight reads are copied in as synthesized (tests/conftest.py, smoke_datasets); the
preflight's report is among the outputs compared with the local run."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from imagekv import plan
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 (fixture)
from smoke_config import SMOKE_CONFIG
from workflow_runs import differing_outputs, failure_details, fresh_copy, output_digests, snakemake, tool_env  # noqa: F401

GPU_RULES = {"extract_features"}
SLICE = ["results/smoke/llava_onevision/pascal5i/probe/none/values.csv"]
# The MLM extraction waits for the preflight, which reads every dataset an MLM prompt is built from:
# those the slice does not probe are copied in already synthesized, so one synthesis job is enough.
SYNTHESIZED = "pascal5i"
SLICE_JOBS = {"synthesize_dataset": 1, "preflight": 1, "extract_features": 1, "probe": 1}
# What differs between the test cluster and a production one: no accounting database (so squeue
# for status, no account), less memory than the profile asks for, and no patience needed.
TEST_CLUSTER_OPTIONS = [
    "--slurm-status-command", "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks", "1",
    "--slurm-keep-successful-logs",
    "--latency-wait", "5",
    "--default-resources", "mem_mb=1000", "runtime=30",
    "--set-resources", "extract_features:mem_mb=2000", "extract_features:gpu=1",
]


def slurm_jobs_by_rule(project: Path, cluster: SlurmCluster) -> dict[str, list[dict[str, str]]]:
    """Rule -> Slurm's own record of each job the plugin submitted for it.

    The plugin's log path (.snakemake/slurm_logs/rule_NAME/.../JOBID.log) names the rule and the
    Slurm job id; the controller says how the job ended and what it asked for.
    """
    finished = cluster.jobs()
    jobs = defaultdict(list)
    for log in (project / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = log.relative_to(project / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        jobs[rule].append(finished.get(int(log.stem), {"JobId": log.stem, "JobState": "NOT FINISHED"}))
    return dict(jobs)


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, smoke_datasets):
    project = fresh_copy(tmp_path_factory.mktemp("slurm") / "project")
    for dataset in plan.preflight_inputs(SMOKE_CONFIG):
        if Path(dataset).name != SYNTHESIZED:
            shutil.copytree(smoke_datasets / Path(dataset).name, project / dataset)
    profile = ["--workflow-profile", "workflow/profiles/slurm", *TEST_CLUSTER_OPTIONS]
    result = snakemake([*SLICE, *profile], project, env=slurm_cluster.env(tool_env()))
    assert result.returncode == 0, failure_details(result)
    return project, slurm_jobs_by_rule(project, slurm_cluster)


@pytest.mark.slow
def test_every_job_ran_as_a_slurm_job(slurm_run):
    _, jobs = slurm_run
    assert {rule: len(entries) for rule, entries in jobs.items()} == SLICE_JOBS
    states = {entry["JobId"]: entry["JobState"] for entries in jobs.values() for entry in entries}
    assert set(states.values()) == {"COMPLETED"}, states


@pytest.mark.slow
def test_gpu_rules_got_a_gpu_and_cpu_rules_did_not(slurm_run):
    _, jobs = slurm_run
    for rule, entries in jobs.items():
        for entry in entries:
            requested = entry.get("TresPerJob", "")
            assert ("gpu:1" in requested) == (rule in GPU_RULES), (rule, requested)


@pytest.mark.slow
def test_slurm_outputs_are_byte_identical_to_a_local_run(slurm_run, reference_run):
    project, _ = slurm_run
    produced = [path for path in output_digests(project) if path.startswith("results/")]
    assert set(SLICE) <= set(produced)
    assert differing_outputs(reference_run[0], project, only=produced) == []
