"""Workflow timings, printed (never asserted): the smoke run from cold (with its job count and the
time per rule), the no-op rerun, and a restyle.

The restyle edits the shared figure style in a fresh copy of the project and reruns; only plotting
and table rules may run again. It runs twice (the style edited, then edited back), so the second
restyle finds the warm worker (imagekv.worker) even when the first had to start it. Each step prints
its wall time and its CPU seconds: Snakemake's with the processes it waited for, plus the worker's
(the bench gives the worker a folder of its own, so its CPU is this run's).

Usage: python benchmarks/bench_workflow.py [--keep DIR] [--reuse RUN]
--reuse RUN starts from a copy of a finished run (e.g. a copy of a smoke run's project folder) instead
of the run from cold: the current sources are copied over it and one catch-up run redoes what they
changed before the no-op and the restyles are timed.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
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
OUTPUT_FOLDERS = ("figures", "paper_tables")  # their README is a source, their run folders are outputs


def sources(folder: str, names: list[str]) -> set[str]:
    """copytree's ignore: what of ROOT is not a source (outputs, caches, the venv)."""
    ignored = set(NOT_SOURCES(folder, names))
    if Path(folder).parent == ROOT and Path(folder).name in OUTPUT_FOLDERS:
        ignored |= {name for name in names if Path(folder, name).is_dir()}
    return ignored


class Step:
    """One `snakemake --cores all`: wall seconds, CPU seconds, jobs and job-seconds per rule."""

    def __init__(self, workdir: Path, worker_dir: Path):
        before = children_cpu(), worker_cpu(worker_dir)
        start = time.perf_counter()
        env = {**os.environ, "IMAGEKV_WORKER_DIR": str(worker_dir)}
        result = subprocess.run([SNAKEMAKE, "--cores", "all"], cwd=workdir, capture_output=True, text=True, env=env)
        self.wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"snakemake failed in {workdir}:\n{result.stderr[-4000:]}")
        self.snakemake_cpu = children_cpu() - before[0]
        after = worker_cpu(worker_dir)
        self.worker_cpu = sum(cpu - before[1].get(pid, 0.0) for pid, cpu in after.items())
        self.worker_started = bool(set(after) - set(before[1]))
        log = result.stdout + result.stderr
        self.jobs, self.seconds = job_counts(log), seconds_per_rule(log)

    def summary(self) -> str:
        started = ", worker started" if self.worker_started else ""
        return (f"{self.wall:7.1f} s  ({sum(self.jobs.values())} jobs; CPU {self.snakemake_cpu + self.worker_cpu:.1f} s ="
                f" Snakemake {self.snakemake_cpu:.1f} + jobs in the worker {self.worker_cpu:.1f}{started})")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worker_cpu(worker_dir: Path) -> dict[int, float]:
    """pid -> CPU seconds of each live worker server in `worker_dir`, with its reaped children (the jobs)."""
    cpu = {}
    for pid_file in worker_dir.glob("*.pid"):
        pid = int(pid_file.read_text())
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited (idle)
        cpu[pid] = sum(int(ticks) for ticks in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return cpu


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument("--reuse", type=Path, help="a finished run's project folder to start from, instead of the cold run")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="imagekv-bench-"))
    workdir = base / "project"
    worker_dir = base / "worker"
    worker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if args.reuse:
        shutil.copytree(args.reuse, workdir, symlinks=True, ignore=shutil.ignore_patterns(".git", ".venv"))
    shutil.copytree(ROOT, workdir, ignore=sources, dirs_exist_ok=True)

    first = Step(workdir, worker_dir)
    noop = Step(workdir, worker_dir)
    style = workdir / "src" / "imagekv" / "figures" / "style.py"
    original = style.read_text()
    style.write_text(original.replace('style="whitegrid"', 'style="ticks"'))
    restyles = [Step(workdir, worker_dir)]
    style.write_text(original)
    restyles.append(Step(workdir, worker_dir))

    print(f"{'catch-up run' if args.reuse else 'smoke run from cold'}: {first.summary()}")
    print_rules(first.jobs, first.seconds)
    print(f"no-op rerun:         {noop.summary()}")
    for label, restyle in zip(("restyle (style.py):", "restyle back:"), restyles):
        non_plot = {rule: n for rule, n in restyle.jobs.items() if not PLOT_RULE.match(rule)}
        print(f"{label:20} {restyle.summary()}")
        print_rules(restyle.jobs, restyle.seconds)
        print(f"  non-plot jobs rerun: {sum(non_plot.values())} (target 0) {non_plot or ''}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
