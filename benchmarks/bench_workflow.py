"""Workflow timings, printed (never asserted): the smoke run from cold (with its job count and the
time per rule), the no-op rerun, and a restyle.

The restyle edits the shared figure style in a fresh copy of the project and reruns; only plotting
and table rules may run again. Usage: python benchmarks/bench_workflow.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PLOT_RULE = re.compile(r"^(figure_|table_|all$)")
# Snakemake's log: "[date]" then "rule NAME:" ... "jobid: N" when a job starts, "Finished jobid: N" when it ends.
STARTED = re.compile(r"^\[(.+?)\]\n(?:local)?rule (\w+):\n(?:.*\n)*?\s+jobid: (\d+)$", flags=re.M)
FINISHED = re.compile(r"^\[(.+?)\]\nFinished jobid: (\d+)", flags=re.M)
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".snakemake", "results", "logs", "data", "__pycache__", "*.egg-info", "report.html")


def snakemake(workdir: Path) -> tuple[float, dict[str, int], dict[str, float]]:
    """Run `snakemake --cores all`; return wall seconds, the jobs per rule it ran and their seconds per rule."""
    start = time.perf_counter()
    result = subprocess.run([SNAKEMAKE, "--cores", "all"], cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{result.stderr[-4000:]}")
    log = result.stdout + result.stderr
    return elapsed, job_counts(log), seconds_per_rule(log)


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


def seconds_per_rule(log: str) -> dict[str, float]:
    """Rule -> summed wall seconds of its jobs (start to finish, to Snakemake's one-second stamps)."""
    def when(stamp: str) -> datetime:
        return datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y")

    started = {job: (when(stamp), rule) for stamp, rule, job in STARTED.findall(log)}
    seconds = defaultdict(float)
    for stamp, job in FINISHED.findall(log):
        if job in started:
            begun, rule = started[job]
            seconds[rule] += (when(stamp) - begun).total_seconds()
    return dict(seconds)


def print_rules(jobs: dict[str, int], seconds: dict[str, float]) -> None:
    """Jobs, summed job-seconds and seconds per job of each rule, the costliest first."""
    print("  rule                           jobs  job-seconds  per job")
    for rule, total in sorted(seconds.items(), key=lambda item: -item[1]):
        count = jobs.get(rule, 0)
        print(f"  {rule:<30} {count:4d}  {total:11.0f}  {total / max(count, 1):7.1f}")


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

    cold, cold_jobs, cold_seconds = snakemake(workdir)
    noop, noop_jobs, _ = snakemake(workdir)
    style = workdir / "src" / "imagekv" / "figures" / "style.py"
    style.write_text(style.read_text().replace('style="whitegrid"', 'style="ticks"'))
    restyle, restyle_jobs, restyle_seconds = snakemake(workdir)
    non_plot = {rule: n for rule, n in restyle_jobs.items() if not PLOT_RULE.match(rule)}

    print(f"smoke run from cold:   {cold:7.1f} s  ({sum(cold_jobs.values())} jobs)")
    print_rules(cold_jobs, cold_seconds)
    print(f"no-op rerun:           {noop:7.1f} s  ({sum(noop_jobs.values())} jobs)")
    print(f"restyle (style.py):    {restyle:7.1f} s  ({sum(restyle_jobs.values())} jobs)")
    print_rules(restyle_jobs, restyle_seconds)
    print(f"non-plot jobs rerun after restyle: {sum(non_plot.values())} (target 0) {non_plot or ''}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
