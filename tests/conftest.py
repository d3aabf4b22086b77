import os
from collections import Counter
from pathlib import Path

import pytest

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
