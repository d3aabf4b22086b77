"""Atomic writes: a failed or killed writer never leaves its output, nor debris beside it, and
writers of one output never break each other."""

import json
import multiprocessing
import os
import subprocess
import sys
import threading

import pytest

from imagekv import io
from imagekv.io import atomic_path, write_json


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(target.parent.iterdir()) == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has this id now (reuse within the test is not a concern)


def test_only_the_leftovers_of_dead_writers_on_this_host_are_removed(tmp_path):
    killed = tmp_path / f".table.csv.{io._HOST}-{dead_pid()}.k1ll3d_1.partial"  # what SIGKILL leaves behind
    live = tmp_path / f".table.csv.{io._HOST}-{os.getppid()}.w0rk1ng.partial"  # a writer still running
    remote = tmp_path / ".table.csv.0badc0de-1.r3m0te.partial"  # another host's: its pids mean nothing here
    other = tmp_path / f".other.csv.{io._HOST}-{dead_pid()}.x.partial"  # another target's
    for path in (killed, live, remote, other):
        path.write_text("half")
    write_json(tmp_path / "table.csv", {"b": 1, "a": [1, 2]})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, remote.name, other.name, "table.csv"])
    assert (tmp_path / "table.csv").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def write_versions(target: str, writer: int, count: int) -> None:
    for version in range(count):
        write_json(target, {"writer": writer, "version": version, "payload": "x" * 5000})


def assert_one_complete_version(target, writers: int, count: int) -> None:
    final = json.loads(target.read_text())
    assert final["payload"] == "x" * 5000 and final["writer"] in range(writers) and final["version"] in range(count)
    assert [p.name for p in target.parent.iterdir()] == [target.name], "no temporary file is left"


def test_threads_writing_one_json_all_succeed(tmp_path):
    target = tmp_path / "shared.json"
    errors = []

    def run(writer: int) -> None:
        try:
            write_versions(str(target), writer, 75)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(writer,)) for writer in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_one_complete_version(target, 4, 75)


def test_processes_writing_one_json_all_succeed_while_it_is_read(tmp_path):
    target = tmp_path / "shared.json"
    write_json(target, {"writer": 0, "version": 0, "payload": "x" * 5000})
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=write_versions, args=(str(target), writer, 40)) for writer in range(4)]
    for process in writers:
        process.start()
    reads = 0
    while any(process.is_alive() for process in writers):
        assert json.loads(target.read_text())["payload"] == "x" * 5000  # a reader never sees half a file
        reads += 1
    for process in writers:
        process.join()
    assert [process.exitcode for process in writers] == [0, 0, 0, 0]
    assert_one_complete_version(target, 4, 40)


def test_outputs_follow_the_umask(tmp_path):
    """In a fresh process, so the umask is the one it starts with (read once at import)."""
    script = (
        "import os, sys; from pathlib import Path\n"
        "from imagekv.io import atomic_path, write_json\n"
        "out = Path(sys.argv[1])\n"
        "write_json(out / 'atomic.json', {})\n"
        "with atomic_path(out / 'replaced.bin') as tmp:\n"
        "    tmp.unlink(); fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600); os.close(fd)\n"
    )
    for umask, file_mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        out = tmp_path / oct(umask)
        out.mkdir()
        subprocess.run(
            [sys.executable, "-c", f"import os; os.umask({umask}); exec({script!r})", str(out)],
            check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        assert modes == {"atomic.json": file_mode, "replaced.bin": file_mode}
