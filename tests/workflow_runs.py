"""Fresh copies of the project and the runs the slow end-to-end tests share.

`reference_run` (session fixture, defined in conftest.py so that every module shares one) is one
clean `snakemake --cores all` in a fresh copy, the only
full smoke run of the test session: the workflow tests read its outputs, and the Slurm,
crash-safety and reviewer tests compare theirs with it byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Outputs and local state never copied into a fresh working copy.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".snakemake", "results", "logs", "data", "__pycache__", "*.egg-info", ".pytest_cache",
    "report.html", "outputs",
)
OUTPUT_DIRS = ("data", "results", "figures", "paper_tables")
RUN_TIMEOUT = 2400  # seconds for one smoke run: about 210 jobs, 10-20 min on 2 cores (CI allows 90)
JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$", flags=re.M)


def fresh_copy(destination: Path) -> Path:
    """The project's sources, without outputs, as a user finds them after `git clone`."""
    shutil.copytree(ROOT, destination, ignore=NOT_SOURCES, ignore_dangling_symlinks=True)
    for folder in ("figures", "paper_tables"):
        for run_outputs in (destination / folder).glob("*/"):
            shutil.rmtree(run_outputs)
    return destination


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """This venv first on PATH (the rules call `python`), this checkout's imagekv, and no model hub."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_tool(args: list[str], cwd: Path, *, timeout: int = 120, env: dict[str, str] | None = None):
    """Run a command under `timeout -k` (a hung Snakemake ignores SIGTERM) and capture its output."""
    bounded = ["timeout", "-k", "10", str(timeout), *args]
    return subprocess.run(bounded, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout + 30)


def snakemake(args: list[str], cwd: Path, *, timeout: int = RUN_TIMEOUT, env: dict[str, str] | None = None):
    return run_tool([str(BIN / "snakemake"), *args], cwd, timeout=timeout, env=env)


def jobs_run(result: subprocess.CompletedProcess) -> Counter:
    """Rule -> number of jobs Snakemake started, from its log (`rule NAME:` opens each job)."""
    return Counter(JOB_HEADER.findall(result.stdout + result.stderr))


def output_digests(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under the output folders."""
    digests = {}
    for folder in OUTPUT_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                digests[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def differing_outputs(expected: Path, actual: Path, only: list[str] | None = None) -> list[str]:
    """Output files (all, or the paths in `only`) missing on one side or with different bytes."""
    want, got = output_digests(expected), output_digests(actual)
    paths = want.keys() | got.keys() if only is None else set(only)
    return sorted(path for path in paths if want.get(path) != got.get(path))


def failure_details(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
