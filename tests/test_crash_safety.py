"""A smoke run killed with SIGKILL (a power cut) inside extraction, a probe and a figure job, then
resumed with the documented command, ends with outputs byte-identical to an uninterrupted run.

The run under test redoes one chain of the smoke run in a copy of the reference run, rather than the
whole smoke run a second time: one MLM's feature store of one dataset, its probes, the collected
results and the figure drawn from them, asked for as the run's target. Each kill point is crossed
the same way as in a whole run, in a fraction of the time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from store_diff import shard_differences
from workflow_runs import BIN, RUN_TIMEOUT, differing_outputs, failure_details, snakemake, tool_env  # noqa: F401

# The chain redone (its outputs deleted) and the target that asks for it: only what the target
# rebuilds (the dataset's prefix stores are not on its path, so they are kept).
REDO = (
    "results/smoke/llava_onevision/pascal5i/features/none", "results/smoke/llava_onevision/pascal5i/probe",
    "results/smoke/probes.csv", "figures/smoke/layerwise_probes.*", "logs",
)
TARGET = "figures/smoke/layerwise_probes.pdf"
RESUME = [["--unlock"], ["--cores", "all", "--rerun-incomplete", TARGET]]  # the README's recovery command, for TARGET
POLL_SECONDS = 0.05


def _any_file(pattern: str) -> Callable[[Path], bool]:
    return lambda project: next(project.glob(pattern), None) is not None


def _extraction_started(project: Path) -> bool:
    """A feature store is being written: its staging folder holds the spec stamp (shards follow)."""
    return next(project.glob("results/smoke/*/*/features/.*.partial/shards/spec.json"), None) is not None


# Each kill point, in workflow order: the moment the condition first holds in a run resumed after
# the previous kill. Probe and figure jobs open their log file as they start.
KILL_POINTS: dict[str, Callable[[Path], bool]] = {
    "extraction": _extraction_started,
    "probe": _any_file("logs/smoke/probe/**/*.log"),
    "figure": _any_file("logs/smoke/figures/*.log"),
}


def run_and_kill_when(project: Path, condition: Callable[[], bool]) -> None:
    """Start the smoke run in its own process group; SIGKILL the whole group once `condition` holds."""
    process = subprocess.Popen(
        [str(BIN / "snakemake"), *RESUME[1]], cwd=project, env=tool_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not condition():
            assert process.poll() is None, "the run ended before reaching the kill point"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(POLL_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may have ended on its own
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
def test_killed_runs_resume_to_identical_outputs(reference_run, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(reference_run[0], project, symlinks=True)  # keeps mtimes and .snakemake records
    for redo in REDO:
        for path in project.glob(redo):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for condition in KILL_POINTS.values():
        run_and_kill_when(project, lambda: condition(project))
        unlocked = snakemake(RESUME[0], project)
        assert unlocked.returncode == 0, failure_details(unlocked)
    result = snakemake(RESUME[1], project)
    assert result.returncode == 0, failure_details(result)
    differing = differing_outputs(reference_run[0], project)
    shards = [path for path in differing if path.endswith(".safetensors") and (project / path).exists()
              and (reference_run[0] / path).exists()]
    details = [line for path in shards for line in shard_differences(reference_run[0] / path, project / path)]
    assert differing == [], "\n".join(details)  # issue 20: which values of a differing shard, if any
