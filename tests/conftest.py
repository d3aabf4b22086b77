import fcntl
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from imagekv import plan
from imagekv.datasets.synthetic import write_synthetic
from smoke_config import SMOKE_CONFIG
from workflow_runs import failure_details, fresh_copy, jobs_run, snakemake

# No hub access here: fail fast instead of retrying for ~25 s (shared/notes/STACK.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread in each test process: xdist runs 4 of them on 2 cores, where torch's default (a
# thread per core) spins waiting for the busy other core. Measured at load 9-12 on the six torch-heavy
# unit test files: 94 CPU-s and 265 s wall on the default threads, 34 CPU-s and 57 s on one.
torch.set_num_threads(1)

# pytest-xdist (pyproject.toml: `-n 4 --dist loadfile --no-loadscope-reorder`) hands each worker process
# whole test files, in collection order. The files that take minutes (measured in CI, slowest first)
# start at once so the longest chain, the reference smoke run and the crash test after it, starts at
# t=0; the workers that are not busy with one share the rest. The files queued behind the first ones
# (xdist gives a worker its next file before its current one ends) read the reference run anyway.
STARTED_FIRST = (
    "test_crash_safety.py", "test_reproducible_extraction.py", "test_slurm.py", "test_controls.py",
    "test_masked_probes.py", "test_workflow.py", "test_reviewer_mode.py", "test_shared_cache.py",
    "test_published_roots.py", "test_worker.py", "test_long_specs.py", "test_preflight.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {name: rank for rank, name in enumerate(STARTED_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: files keep their own order


def built_once(tmp_path_factory, name: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
    """FOLDER and the record `build(FOLDER)` returned, built once per test session even when xdist runs
    tests in several processes: the first worker to ask builds it under a file lock in the session's
    shared temporary folder, the others wait and take its folder and record (pytest-xdist docs, "Making
    session-scoped fixtures execute only once")."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        return folder, build(folder)
    folder = tmp_path_factory.getbasetemp().parent / name  # above each worker's own basetemp: this session's
    record = folder.with_suffix(".json")
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            folder.mkdir()
            try:
                built = {"record": build(folder)}
            except Exception as error:
                record.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
                raise
            record.write_text(json.dumps(built))
    built = json.loads(record.read_text())
    if "error" in built:
        pytest.fail(f"building {name} failed in another xdist worker: {built['error']}")
    return folder, built["record"]


# Defined here, not imported into test modules: an imported fixture is a separate fixture per module,
# and the full smoke run would run once per module instead of once per session.
@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> tuple[Path, Counter]:
    """A fresh copy after one clean local smoke run, and the jobs that run started per rule."""

    def smoke_run(folder: Path) -> dict:
        result = snakemake(["--cores", "all"], fresh_copy(folder / "project"))
        return {"returncode": result.returncode, "details": failure_details(result), "jobs": jobs_run(result)}

    folder, run = built_once(tmp_path_factory, "reference", smoke_run)
    assert run["returncode"] == 0, run["details"]
    return folder / "project", Counter(run["jobs"])


@pytest.fixture(scope="session")
def reference_report(reference_run, tmp_path_factory) -> tuple[Path, str]:
    """`snakemake --report` of the reference run, built once for the tests that read it: the report
    and Snakemake's log of building it."""

    def report(folder: Path) -> dict:
        result = snakemake(["--report", str(folder / "report.html")], reference_run[0], timeout=300)
        return {"returncode": result.returncode, "details": failure_details(result), "log": result.stdout + result.stderr}

    folder, built = built_once(tmp_path_factory, "reference_report", report)
    assert built["returncode"] == 0, built["details"]
    return folder / "report.html", built["log"]


@pytest.fixture(scope="session")
def smoke_datasets(tmp_path_factory) -> Path:
    """DIR/<dataset>: every smoke dataset as `rule synthesize_dataset` writes it (same function, same spec),
    made once per session for the tests that need the synthetic data but do not test its synthesis."""

    def synthesize_all(root: Path) -> dict:
        for name in SMOKE_CONFIG["datasets"]:
            spec = plan.dataset_spec(SMOKE_CONFIG, name)
            write_synthetic(spec["dataset"], root / name, spec["cfg"], spec["seed"])
        return {}

    return built_once(tmp_path_factory, "smoke_datasets", synthesize_all)[0]
