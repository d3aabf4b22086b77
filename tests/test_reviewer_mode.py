"""Reviewer mode: outputs shared through a DVC remote are taken up by a fresh clone without recomputing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from workflow_runs import BIN, differing_outputs, failure_details, jobs_run, run_tool, snakemake, tool_env  # noqa: F401

GIT_IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]


def checked(args, cwd):
    result = run_tool(args, cwd)
    assert result.returncode == 0, f"{args}: {failure_details(result)}"
    return result.stdout + result.stderr


def git(args, cwd):
    return checked(["git", *GIT_IDENTITY, *args], cwd)


def reviewer(command, cwd):
    return checked([str(BIN / "python"), "-m", "imagekv.reviewer", command], cwd)


@pytest.fixture(scope="module")
def pulled_clone(reference_run, tmp_path_factory):
    """A clone that pulled the reference run's outputs from a local-folder DVC remote, then ran."""
    base = tmp_path_factory.mktemp("reviewer")
    origin, remote, clone = base / "origin", base / "remote", base / "clone"
    shutil.copytree(reference_run[0], origin, symlinks=True)  # copy2 keeps modification times
    git(["init", "-q"], origin)
    checked([str(BIN / "dvc"), "remote", "add", "-d", "team", str(remote)], origin)
    reviewer("record", origin)
    git(["add", "-A"], origin)
    git(["commit", "-q", "-m", "run with outputs recorded"], origin)
    checked([str(BIN / "dvc"), "push", "--quiet"], origin)

    git(["clone", "-q", str(origin), str(clone)], base)
    reviewer("restore", clone)
    run = snakemake(["--cores", "all"], clone)
    assert run.returncode == 0, failure_details(run)
    return origin, clone, run


@pytest.mark.slow
def test_recording_adds_only_dvc_files_to_git(pulled_clone):
    origin, _, _ = pulled_clone
    tracked = git(["ls-files"], origin).split()
    assert {"data.dvc", "outputs/smoke.dvc"} <= set(tracked)
    assert not [path for path in tracked if path.startswith(("results/", "data/", "logs/"))]


@pytest.mark.slow
def test_pulled_clone_runs_no_job(pulled_clone):
    _, _, run = pulled_clone
    jobs = jobs_run(run)
    assert jobs["extract_features"] == 0 and jobs["probe"] == 0
    assert not jobs, jobs
    assert "Nothing to be done" in run.stdout + run.stderr


@pytest.mark.slow
def test_pulled_outputs_are_the_recorded_ones(pulled_clone):
    origin, clone, _ = pulled_clone
    assert differing_outputs(origin, clone) == []
    status = checked([str(BIN / "dvc"), "status"], clone)
    assert "up to date" in status, status
    assert git(["status", "--porcelain"], clone).strip() == ""


def test_restore_without_recorded_run_names_the_missing_files(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("run: smoke\n")
    result = subprocess.run(
        [str(BIN / "python"), "-m", "imagekv.reviewer", "restore"], cwd=tmp_path, env=tool_env(),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "data.dvc" in result.stderr and "outputs/smoke.dvc" in result.stderr
