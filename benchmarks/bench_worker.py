"""The warm worker (imagekv.worker), timed against one process per job, side by side in one run.

In a fresh copy of the project, after building the msrc twin and the preflight, the same chain of
extraction and probe jobs (four models on msrc) runs three times, its outputs deleted in between:
with IMAGEKV_WORKER=off, through a worker that the chain's first job starts, and through that
worker, warm. Timings are printed, never asserted. Usage: python benchmarks/bench_worker.py [--cores N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from workflow_runs import fresh_copy, jobs_run, output_digests, tool_env  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
MODELS = ("llava_next", "qwen2_5_vl", "siglip", "clip")
TARGETS = [f"results/smoke/{model}/msrc/probe/none/{probe}.csv"
           for model, probes in (("llava_next", ("values", "projection", "tower")),
                                 ("qwen2_5_vl", ("values", "projection", "tower")),
                                 ("siglip", ("siglip",)), ("clip", ("clip",)))
           for probe in probes]
SETUP = ["data/synthetic/msrc", "results/smoke/preflight.json"]


def snakemake(workdir: Path, targets: list[str], cores: str, env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run([SNAKEMAKE, "--cores", cores, *targets], cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{result.stderr[-4000:]}")
    return elapsed, sum(jobs_run(result).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cores", default="all")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="imagekv-bench-worker-"))
    workdir = fresh_copy(base / "project")
    sockets = base / "sockets"
    sockets.mkdir(mode=0o700)
    env = {**tool_env(), "IMAGEKV_WORKER_DIR": str(sockets)}
    snakemake(workdir, SETUP, args.cores, {**env, "IMAGEKV_WORKER": "off"})
    times, digests = {}, []
    for label, mode in (("one process per job (IMAGEKV_WORKER=off)", "off"),
                        ("worker, started by the first job", "on"), ("worker, warm", "on")):
        for model in MODELS:
            shutil.rmtree(workdir / "results" / "smoke" / model / "msrc" / "probe", ignore_errors=True)
            shutil.rmtree(workdir / "results" / "smoke" / model / "msrc" / "features", ignore_errors=True)
        times[label] = snakemake(workdir, TARGETS, args.cores, {**env, "IMAGEKV_WORKER": mode})
        digests.append({path: digest for path, digest in output_digests(workdir).items() if "/msrc/" in path})
    for label, (seconds, jobs) in times.items():
        print(f"{label:<45} {seconds:7.1f} s  ({jobs} jobs)")
    same = all(digest == digests[0] for digest in digests)
    print(f"outputs byte-identical in the three runs: {same} ({len(digests[0])} files)")
    for pid in sockets.glob("*.pid"):  # the servers this benchmark started
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid.read_text()), signal.SIGTERM)
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
