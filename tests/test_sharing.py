"""Two users share one cache: what one user writes under the default umask (stores, datasets, the
lock file) another user, without write access, can read in full, verification included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from imagekv.datasets.lockfile import read_lock
from imagekv.features import FeatureStore
from test_download import DAVIS_MEMBERS, Server, make_zip
from test_extract_store import REFCOCO, make_spec

OTHER_USER = 65534  # nobody

WRITER = """
import json, sys
from pathlib import Path
from imagekv.datasets.download import fetch_dataset
from imagekv.datasets.sources import Archive, DatasetSource
from imagekv.datasets.synthetic import synthesize
from imagekv.extract import extract_store

shared, spec, url = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
synthesize("refcoco", Path(spec["dataset_root"]), json.loads(sys.argv[4]), seed=3)
extract_store(spec, shared / "store")
archive = Archive(name="davis.zip", urls=(url + "/davis.zip",), kind="zip", strip="DAVIS/")
fetch_dataset("davis", shared / "real" / "davis", {"davis": DatasetSource("davis", (archive,))}, shared / "lock.json")
"""


@pytest.fixture
def shared():
    """A folder outside pytest's private (0700) temporary tree, so another user can reach it."""
    path = Path(tempfile.mkdtemp(prefix="imagekv-shared-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def read_as(uid: int, action) -> None:
    """Run `action` in a forked child as `uid`; fail with the child's traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        status = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            action()
        except BaseException:  # noqa: BLE001 - reported to the parent
            os.write(write_end, traceback.format_exc().encode())
            status = 1
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


def test_a_store_and_a_dataset_written_by_one_user_are_read_by_another(shared, tmp_path):
    server = Server()
    try:
        server.files["davis.zip"] = make_zip(DAVIS_MEMBERS)
        spec = make_spec(tmp_path / "refcoco", "noise", {"grid": [4, 3], "width": 16})
        subprocess.run(
            [sys.executable, "-c", WRITER, str(shared), json.dumps(spec), server.url, json.dumps(REFCOCO)],
            check=True, timeout=600, preexec_fn=lambda: os.umask(0o022),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    finally:
        server.close()
    written = [shared, *sorted(shared.rglob("*"))]
    modes = {str(p.relative_to(shared)): p.stat().st_mode & 0o777 for p in written}
    assert {mode for path, mode in modes.items() if (shared / path).is_dir()} == {0o755}
    assert {mode for path, mode in modes.items() if (shared / path).is_file()} == {0o644}, modes
    assert any(path.endswith(".safetensors") for path in modes) and "real/davis/.complete" in modes

    def read_everything() -> None:
        assert not os.access(shared / "store" / "shards", os.W_OK), "the reader must lack write access"
        store = FeatureStore(shared / "store")
        for image_id in store.image_ids:
            store.features(image_id, "values")
        for text in store.meta["texts"]:
            store.text(text)
        assert read_lock(shared / "lock.json")
        for path in (shared / "real" / "davis").rglob("*"):
            if path.is_file():
                path.read_bytes()

    if os.geteuid() != 0:
        pytest.skip("reading as a second user needs root (to switch uid); the modes above were checked")
    read_as(OTHER_USER, read_everything)
