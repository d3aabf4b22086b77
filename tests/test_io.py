"""Atomic writes: a failed or killed writer never leaves its output, nor debris beside it."""

import pytest

from imagekv.io import atomic_path, write_json


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(target.parent.iterdir()) == []


def test_the_leftover_of_a_killed_writer_is_removed_on_the_next_write(tmp_path):
    (tmp_path / ".table.csv.k1ll3d.partial").write_text("half")  # what SIGKILL leaves behind
    (tmp_path / ".other.csv.x.partial").write_text("another job's")
    write_json(tmp_path / "table.csv", {"b": 1, "a": [1, 2]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.csv.x.partial", "table.csv"]
    assert (tmp_path / "table.csv").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_outputs_get_the_mode_of_a_plainly_written_file(tmp_path):
    write_json(tmp_path / "atomic.json", {})
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "atomic.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
