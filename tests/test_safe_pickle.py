"""The plain-data unpickler loads RefCOCO-style refs and refuses anything that could run code."""

from __future__ import annotations

import os
import pickle

import pytest

from imagekv.datasets.safe_pickle import UnsafePickleError, load_plain_pickle

REFS = [
    {
        "ref_id": 0,
        "ann_id": 7,
        "split": "val",
        "score": 0.5,
        "ok": True,
        "note": None,
        "sentences": [{"sent": "the man on the left", "tokens": ["man", "left"]}],
        "box": (1, 2, 3, 4),
    }
]


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    pass


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_containers_load(tmp_path, protocol):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(REFS, protocol=protocol))
    assert load_plain_pickle(path) == REFS


def test_reduce_calling_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref": RunsAShellCommand(marker)}], protocol=2))
    with pytest.raises(UnsafePickleError, match=rf"{tmp_path}/refs\(unc\)\.p: refused global (posix|os)\.system"):
        load_plain_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [Plain(), {1, 2}, b"raw bytes"], ids=["class instance", "set", "bytes"])
def test_anything_but_plain_containers_is_refused(tmp_path, payload):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps({"x": [payload]}, protocol=4))
    with pytest.raises(UnsafePickleError, match=str(path)):
        load_plain_pickle(path)


def test_truncated_and_missing_files_are_named(tmp_path):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(REFS, protocol=2)[:20])
    with pytest.raises(UnsafePickleError, match=f"{path}: unreadable pickle"):
        load_plain_pickle(path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.p")):
        load_plain_pickle(tmp_path / "absent.p")
