"""The workflow as a user runs it: lint, format, and the smoke run end to end in a fresh copy."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake")]
# Outputs and local state never copied into the fresh working copy.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".snakemake", "results", "logs", "data", "__pycache__", "*.egg-info", ".pytest_cache", "report.html")


def run(args, cwd, timeout=1800):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_lint_is_clean():
    result = run(SNAKEMAKE + ["--lint"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A copy of the project (no outputs) after one `snakemake --cores all`."""
    workdir = tmp_path_factory.mktemp("smoke") / "project"
    shutil.copytree(ROOT, workdir, ignore=NOT_SOURCES, ignore_dangling_symlinks=True)
    for stale in ("figures", "paper_tables"):
        for sub in (workdir / stale).glob("*/"):
            shutil.rmtree(sub)
    result = run(SNAKEMAKE + ["--cores", "all"], workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.mark.slow
def test_smoke_run_writes_figures_and_tables(smoke_run):
    figures = sorted(p.name for p in (smoke_run / "figures" / "smoke").iterdir())
    tables = sorted(p.name for p in (smoke_run / "paper_tables" / "smoke").iterdir())
    assert "layerwise_probes.png" in figures and "layerwise_probes.pdf" in figures
    assert {"best_layers.csv", "best_layers.md", "best_layers.tex"} <= set(tables)
    assert "smoke scale" in (smoke_run / "paper_tables" / "smoke" / "best_layers.md").read_text()


@pytest.mark.slow
def test_second_run_has_nothing_to_do(smoke_run):
    result = run(SNAKEMAKE + ["--cores", "all", "--dry-run"], smoke_run)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_report_builds(smoke_run):
    result = run(SNAKEMAKE + ["--report", "report.html"], smoke_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (smoke_run / "report.html").stat().st_size > 10_000
