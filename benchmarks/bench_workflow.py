"""Workflow timings, printed (never asserted): the smoke run from cold, the no-op rerun, and a restyle.

The restyle edits the shared figure style in a fresh copy of the project and reruns; only plotting
and table rules may run again. Usage: python benchmarks/bench_workflow.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PLOT_RULE = re.compile(r"^(figure_|table_|all$)")
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".snakemake", "results", "logs", "data", "__pycache__", "*.egg-info", "report.html")


def snakemake(workdir: Path) -> tuple[float, dict[str, int]]:
    """Run `snakemake --cores all`; return wall seconds and the jobs per rule it ran."""
    start = time.perf_counter()
    result = subprocess.run([SNAKEMAKE, "--cores", "all"], cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{result.stderr[-4000:]}")
    return elapsed, job_counts(result.stdout + result.stderr)


def job_counts(log: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's 'Job stats' table (empty when there was nothing to do)."""
    if "Job stats:" not in log:
        return {}
    table = log.split("Job stats:", 1)[1].splitlines()[3:]
    counts = {}
    for line in table:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="imagekv-bench-"))
    workdir = base / "project"
    shutil.copytree(ROOT, workdir, ignore=NOT_SOURCES)
    for outputs in ("figures", "paper_tables"):
        for sub in (workdir / outputs).glob("*/"):
            shutil.rmtree(sub)

    cold, cold_jobs = snakemake(workdir)
    noop, noop_jobs = snakemake(workdir)
    style = workdir / "src" / "imagekv" / "figures" / "style.py"
    style.write_text(style.read_text().replace('style="whitegrid"', 'style="ticks"'))
    restyle, restyle_jobs = snakemake(workdir)
    non_plot = {rule: n for rule, n in restyle_jobs.items() if not PLOT_RULE.match(rule)}

    print(f"smoke run from cold:   {cold:7.1f} s  ({sum(cold_jobs.values())} jobs)")
    print(f"no-op rerun:           {noop:7.1f} s  ({sum(noop_jobs.values())} jobs)")
    print(f"restyle (style.py):    {restyle:7.1f} s  ({sum(restyle_jobs.values())} jobs: {restyle_jobs})")
    print(f"non-plot jobs rerun after restyle: {sum(non_plot.values())} (target 0) {non_plot or ''}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
