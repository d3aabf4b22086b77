import os
from collections import Counter
from pathlib import Path

import pytest

from imagekv import plan
from imagekv.datasets.synthetic import write_synthetic
from smoke_config import SMOKE_CONFIG
from workflow_runs import failure_details, fresh_copy, jobs_run, snakemake

# No hub access here: fail fast instead of retrying for ~25 s (shared/notes/STACK.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Defined here, not imported into test modules: an imported fixture is a separate fixture per module,
# and the full smoke run would run once per module instead of once per session.
@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> tuple[Path, Counter]:
    """A fresh copy after one clean local smoke run, and the jobs that run started per rule."""
    project = fresh_copy(tmp_path_factory.mktemp("reference") / "project")
    result = snakemake(["--cores", "all"], project)
    assert result.returncode == 0, failure_details(result)
    return project, jobs_run(result)


@pytest.fixture(scope="session")
def smoke_datasets(tmp_path_factory) -> Path:
    """DIR/<dataset>: every smoke dataset as `rule synthesize_dataset` writes it (same function, same spec),
    made once per session for the tests that need the synthetic data but do not test its synthesis."""
    root = tmp_path_factory.mktemp("smoke_datasets")
    for name in SMOKE_CONFIG["datasets"]:
        spec = plan.dataset_spec(SMOKE_CONFIG, name)
        write_synthetic(spec["dataset"], root / name, spec["cfg"], spec["seed"])
    return root
