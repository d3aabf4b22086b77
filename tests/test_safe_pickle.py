"""The plain-data unpickler loads RefCOCO-style refs and refuses anything that could run code."""

from __future__ import annotations

import os
import pickle
import signal

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


@pytest.fixture
def hang_guard():
    """Fail instead of hanging the suite if loading loops (issue 16): a generous one-minute alarm."""

    def fail(signum, frame):
        raise AssertionError("load_plain_pickle did not return within a minute")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def self_referencing_list() -> list:
    cycle: list = []
    cycle.append(cycle)
    return cycle


def self_referencing_dict() -> dict:
    cycle: dict = {"refs": []}
    cycle["refs"].append(cycle)
    return cycle


@pytest.mark.parametrize("build", [self_referencing_list, self_referencing_dict], ids=["list", "dict"])
def test_reference_cycle_is_refused_not_looped_on(tmp_path, hang_guard, build):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(build(), protocol=2))
    if build is self_referencing_list:
        assert len(path.read_bytes()) == 9  # the 9-byte pickle of issue 16
    with pytest.raises(UnsafePickleError, match=rf"{path}: holds a reference cycle"):
        load_plain_pickle(path)


def test_shared_references_load_in_linear_work(tmp_path, hang_guard):
    """Each level holds the level below twice: 2**64 paths through 65 objects, a few hundred bytes."""
    shared: list = ["leaf"]
    for _ in range(64):
        shared = [shared, shared, {"k": shared}]
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(shared, protocol=2))
    assert len(path.read_bytes()) < 1000
    loaded = load_plain_pickle(path)
    depth = 0
    while loaded != ["leaf"]:
        assert loaded[0] is loaded[1] is loaded[2]["k"]  # sharing survives the load
        loaded, depth = loaded[0], depth + 1
    assert depth == 64
