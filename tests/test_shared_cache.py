"""Two users share Snakemake's between-workflow cache of feature stores (README, "Reusing extracted
features across clones").

The first user writes with a private umask (077); a second uid (`nobody`, when this test runs as
root and `runuser` exists) reads every file of the cached store and finds the manifest's sha256;
a second clone restores the store from the cache instead of extracting, and the store verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from imagekv.features import FeatureStore

from workflow_runs import BIN, failure_details, fresh_copy, jobs_run, tool_env

STORE = "results/smoke/noise/msrc/features/none"  # a cheap store: the noise calibration backbone


def run_cached(project: Path, cache: Path, umask: int) -> subprocess.CompletedProcess:
    env = {**tool_env(), "SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    return subprocess.run(
        ["timeout", "-k", "10", "900", str(BIN / "snakemake"), "--cores", "1", "--cache", "extract_features", "--", STORE],
        cwd=project, env=env, capture_output=True, text=True, timeout=960, preexec_fn=lambda: os.umask(umask),
    )


@pytest.fixture
def shared_cache():
    """A cache folder other users can reach (pytest's own temporary folders are private to this user)."""
    cache = Path(tempfile.mkdtemp(prefix="imagekv-shared-cache-"))
    cache.chmod(0o755)
    yield cache
    shutil.rmtree(cache)


def test_a_second_user_reads_the_store_the_first_put_in_the_cache(tmp_path, shared_cache):
    cache = shared_cache
    first = run_cached(fresh_copy(tmp_path / "first"), cache, umask=0o077)
    assert first.returncode == 0, failure_details(first)
    [entry] = [path for path in cache.iterdir() if path.is_dir()]

    for path in [entry, *entry.rglob("*")]:  # readable by others whatever the writer's umask
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
        assert mode & wanted == wanted, f"{path} is {oct(mode)}"

    manifest = json.loads((entry / "manifest.json").read_text())
    if os.geteuid() == 0 and shutil.which("runuser"):
        for name, shard in manifest["shards"].items():
            read = subprocess.run(["runuser", "-u", "nobody", "--", "sha256sum", str(entry / "shards" / name)],
                                  capture_output=True, text=True, timeout=60)
            assert read.returncode == 0, read.stderr
            assert read.stdout.split()[0] == shard["sha256"]
    else:
        for name, shard in manifest["shards"].items():
            assert hashlib.sha256((entry / "shards" / name).read_bytes()).hexdigest() == shard["sha256"]

    second_copy = fresh_copy(tmp_path / "second")
    second = run_cached(second_copy, cache, umask=0o022)
    assert second.returncode == 0, failure_details(second)
    assert jobs_run(second)["extract_features"] == 1 and "from cache" in (second.stdout + second.stderr).lower()
    store = FeatureStore(second_copy / STORE)  # verifies every row it reads against the manifest
    for representation in store.meta["representations"]:
        for image_id in store.image_ids:
            assert store.features(image_id, representation).numel() > 0


def test_outputs_follow_the_umask(tmp_path, smoke_datasets):
    """Outside the cache too: a store written under umask 002 is 0664/0775 (022 gives 0644/0755)."""
    umask = 0o002
    project = fresh_copy(tmp_path / "project")
    dataset = Path(STORE).parts[3]
    shutil.copytree(smoke_datasets / dataset, project / "data" / "synthetic" / dataset)  # only the store is made here
    result = subprocess.run(
        ["timeout", "-k", "10", "900", str(BIN / "snakemake"), "--cores", "1", "--", STORE],
        cwd=project, env=tool_env(), capture_output=True, text=True, timeout=960, preexec_fn=lambda: os.umask(umask),
    )
    assert result.returncode == 0, failure_details(result)
    assert jobs_run(result) == {"extract_features": 1}
    store = project / STORE
    for path in [store, *store.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
