"""Staging folders: a synthesis killed mid-write (SIGKILL, a power cut) leaves its staging folder under
a name the rerun recognises and clears, the result equals an uninterrupted run byte for byte, and DVC
never takes staging in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagekv.datasets.synthetic import write_synthetic
from smoke_config import SMOKE_DATASETS
from workflow_runs import BIN, ROOT, tool_env

DATASET = "pascal5i"  # dozens of files: seconds of writing, time to kill it mid-way
KILL_AFTER_FILES = 5
TIMEOUT = 120


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def synthesize_command(output: Path) -> list[str]:
    spec = {"dataset": DATASET, "source": "synthetic", "cfg": SMOKE_DATASETS[DATASET], "seed": 0}
    return [sys.executable, "-m", "imagekv", "synthesize", "--spec", json.dumps(spec), "--output", str(output)]


def kill_mid_write(output: Path, staging: Path) -> None:
    """Start the synthesis and SIGKILL it once its staging folder holds some files."""
    process = subprocess.Popen(synthesize_command(output), env=tool_env())
    deadline = time.monotonic() + TIMEOUT
    try:
        while sum(path.is_file() for path in staging.rglob("*")) < KILL_AFTER_FILES:
            assert process.poll() is None, "the synthesis ended before it could be killed"
            assert time.monotonic() < deadline, "the staging folder never filled"
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait(timeout=30)


def dvc_ignored(project: Path, paths: list[Path]) -> list[str]:
    """The paths DVC ignores in `project`, as `dvc check-ignore` reports them."""
    command = [str(BIN / "dvc"), "check-ignore", *map(str, paths)]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode in (0, 1), result.stderr  # 1: nothing ignored
    return result.stdout.split()


@pytest.fixture
def dvc_project(tmp_path) -> Path:
    """A DVC project holding this repository's .dvcignore."""
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "--quiet"], cwd=project, check=True, timeout=TIMEOUT)
    shutil.copy(ROOT / ".dvcignore", project / ".dvcignore")
    return project


def test_a_killed_synthesis_is_cleared_by_the_rerun(dvc_project, tmp_path):
    output = dvc_project / "data" / "synthetic" / DATASET
    staging = output.with_name(f".{DATASET}.partial")
    kill_mid_write(output, staging)
    assert staging.is_dir() and not output.exists(), "the kill did not land mid-write"
    assert dvc_ignored(dvc_project, [staging]) == [str(staging)], "DVC would take the staging folder in"

    subprocess.run(synthesize_command(output), env=tool_env(), check=True, timeout=TIMEOUT)
    assert sorted(path.name for path in output.parent.iterdir()) == [DATASET], "staging left behind"
    uninterrupted = tmp_path / "uninterrupted" / DATASET
    write_synthetic(DATASET, uninterrupted, SMOKE_DATASETS[DATASET], seed=0)
    assert file_bytes(output) == file_bytes(uninterrupted)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_a_synthetic_dataset_folder_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_synthetic("davis", tmp_path / "davis", {"clips": 1, "frames": 2}, seed=0)
    finally:
        os.umask(previous)
    assert (tmp_path / "davis").stat().st_mode & 0o777 == 0o777 & ~umask


def test_dvc_ignores_every_staging_name_the_code_writes(dvc_project):
    staging = [  # what a kill leaves: atomic files, feature stores, datasets, downloads
        "results/smoke/.probes.csv.k1ll3d.partial",
        "results/smoke/m/d/features/.none.partial/shards/00000.safetensors",
        "data/synthetic/.pascal5i.partial/JPEGImages/a.jpg",
        "data/synthetic/.pascal5i.retired/JPEGImages/a.jpg",
        "data/real/.davis.unpacking/DAVIS/a.jpg",
        "data/real/.downloads/davis/DAVIS-2017.zip.partial",
    ]
    data = ["data/synthetic/pascal5i/JPEGImages/a.jpg", "results/smoke/m/d/features/none/manifest.json"]
    paths = [dvc_project / Path(name) for name in staging + data]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert sorted(dvc_ignored(dvc_project, paths)) == sorted(str(dvc_project / name) for name in staging)
