"""A smoke run killed with SIGKILL (a power cut) inside extraction, a probe and a figure job, then
resumed with the documented command, ends with outputs byte-identical to an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workflow_runs import BIN, RUN_TIMEOUT, differing_outputs, failure_details, fresh_copy, reference_run, snakemake, tool_env  # noqa: F401

RESUME = [["--unlock"], ["--cores", "all", "--rerun-incomplete"]]  # the README's recovery command
POLL_SECONDS = 0.05


def _any_file(pattern: str) -> Callable[[Path], bool]:
    return lambda project: next(project.glob(pattern), None) is not None


def _extraction_half_done(project: Path) -> bool:
    """A feature shard is on disk in a store still being written (its staging folder)."""
    return next(project.glob("results/smoke/*/*/features/.*.partial/shards/0*.safetensors"), None) is not None


# Each kill point, in workflow order: the moment the condition first holds in a run resumed after
# the previous kill. Probe and figure jobs open their log file as they start.
KILL_POINTS: dict[str, Callable[[Path], bool]] = {
    "extraction": _extraction_half_done,
    "probe": _any_file("logs/smoke/probe/**/*.log"),
    "figure": _any_file("logs/smoke/figures/*.log"),
}


def run_and_kill_when(project: Path, condition: Callable[[], bool]) -> None:
    """Start the smoke run in its own process group; SIGKILL the whole group once `condition` holds."""
    process = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "all", "--rerun-incomplete"], cwd=project, env=tool_env(),
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
def test_killed_runs_resume_to_identical_outputs(reference_run, tmp_path):  # noqa: F811
    project = fresh_copy(tmp_path / "project")
    for condition in KILL_POINTS.values():
        run_and_kill_when(project, lambda: condition(project))
        unlocked = snakemake(RESUME[0], project)
        assert unlocked.returncode == 0, failure_details(unlocked)
    result = snakemake(RESUME[1], project)
    assert result.returncode == 0, failure_details(result)
    assert differing_outputs(reference_run[0], project) == []
