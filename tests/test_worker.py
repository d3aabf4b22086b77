"""The warm worker (imagekv.worker): a command run through it behaves as in its own process.

Each test runs real clients (`python -c` calling imagekv.worker.main, or `python -m imagekv`) against
real servers in a private folder; the servers stay up for the whole module (one start, not one per
test) and are stopped by their pid files at the end."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagekv import plan
from imagekv.datasets.synthetic import synthesize
from smoke_config import SMOKE_CONFIG
from workflow_runs import ROOT, tool_env

TESTS = Path(__file__).resolve().parent
TIMEOUT = 600  # a server's first start imports torch and transformers: tens of seconds on a busy machine


def client(target: str) -> list[str]:
    return [sys.executable, "-c", f"from imagekv.worker import main; main('worker_target:{target}')"]


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, **extra)


def worker_env(folder: Path, **variables: str) -> dict[str, str]:
    env = tool_env()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env["PYTHONPATH"]])
    env.update(IMAGEKV_WORKER_DIR=str(folder), IMAGEKV_WORKER_IDLE="600", **variables)
    env.pop("IMAGEKV_WORKER", None)
    return env


def server_pids(folder: Path) -> set[int]:
    return {int(path.read_text()) for path in folder.glob("*.pid")}


def stop_servers(folder: Path) -> None:
    for pid in server_pids(folder):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker")
    path.chmod(0o700)
    yield path
    stop_servers(path)


def reported(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.splitlines()[-1])


def test_exit_status_streams_cwd_argv_and_environment_reach_the_command(folder, tmp_path):
    env = worker_env(folder, WORKER_PROBE="seen")
    result = run([*client("report"), "3"], env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    seen = reported(result)
    assert seen["cwd"] == str(tmp_path)
    assert seen["argv"] == ["3"]
    assert seen["probe"] == "seen"  # a variable outside the server's key reaches the command too
    assert seen["parent"] in server_pids(folder), "the command did not run in a child of the server"
    assert result.stderr == "a line on stderr\n"


def test_the_cli_exits_and_reports_as_without_the_worker(folder):
    env = worker_env(folder)
    for args in (["config/config.yaml"], ["config/missing.yaml"]):  # relative paths: the cwd is the client's
        command = [sys.executable, "-m", "imagekv", "check-config", *args]
        warm, cold = run(command, env), run(command, {**env, "IMAGEKV_WORKER": "off"})
        assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout)
        assert warm.stderr.splitlines()[-1:] == cold.stderr.splitlines()[-1:]
        assert "no worker" not in warm.stderr


def store_digests(store: Path) -> dict[str, str]:
    files = sorted(path for path in store.rglob("*") if path.is_file())
    return {path.relative_to(store).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def test_a_store_extracted_through_the_worker_has_the_same_bytes(folder, tmp_path):
    dataset = {"images": 2, "num_expressions": 2}
    synthesize("refcoco", tmp_path / "refcoco", dataset, seed=0)
    spec = {
        **plan.extraction_spec(SMOKE_CONFIG, "llava_onevision", "refcoco", "task"),
        "dataset_root": str(tmp_path / "refcoco"), "dataset_cfg": dataset, "layers": [0, 1],
    }
    env = worker_env(folder)
    stores = {}
    for mode in ("on", "off"):
        stores[mode] = tmp_path / f"store-{mode}"
        command = [sys.executable, "-m", "imagekv", "extract", "--spec", json.dumps(spec),
                   "--output", str(stores[mode]), "--threads", "2"]
        result = run(command, {**env, "IMAGEKV_WORKER": mode})
        assert result.returncode == 0, result.stderr[-3000:]
        assert "no worker" not in result.stderr
    assert len(store_digests(stores["on"])) >= 3
    assert store_digests(stores["on"]) == store_digests(stores["off"])


def test_killing_the_client_kills_its_command_at_once(folder):
    job = subprocess.Popen(client("sleep"), env=worker_env(folder), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(job.stdout.readline())
        assert child != job.pid  # the command runs in the server's child, not in the client
        os.kill(child, 0)
    finally:
        job.kill()
        job.wait()
    for _ in range(200):  # the server kills and reaps it as soon as it sees the client's end
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the command's process {child} outlived its client")


def test_another_environment_gets_another_server(folder):
    first = reported(run([*client("report"), "0"], worker_env(folder, WORKER_PROBE="a")))
    same = reported(run([*client("report"), "0"], worker_env(folder, WORKER_PROBE="b")))
    assert same["parent"] == first["parent"]  # WORKER_PROBE is no variable that the server's imports read
    # OMP_NUM_THREADS is read when torch loads OpenMP: a new server, started by this client, which
    # returns although the server it started runs on (the server holds none of the caller's pipes).
    other = run([*client("report"), "0"], worker_env(folder, OMP_NUM_THREADS="2"))
    assert other.returncode == 0, other.stderr
    assert reported(other)["parent"] != first["parent"]
    assert reported(other)["parent"] in server_pids(folder)


@pytest.mark.parametrize("unsafe", ["shared", "a file"])
def test_without_a_safe_folder_the_command_runs_in_the_client(tmp_path, unsafe):
    place = tmp_path / "sockets"
    if unsafe == "shared":
        place.mkdir(mode=0o777)
        place.chmod(0o777)
    else:
        place.write_text("")
    job = subprocess.Popen([*client("report"), "4"], env=worker_env(place), cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = job.communicate(timeout=TIMEOUT)
    assert job.returncode == 4
    assert json.loads(stdout)["pid"] == job.pid
    assert "no worker" in stderr and str(place) in stderr
    assert not list(tmp_path.glob("sockets/*.sock"))


def test_an_interrupt_reaches_the_command_as_in_its_own_process(folder):
    job = subprocess.Popen(client("sleep"), env=worker_env(folder), cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    job.stdout.readline()  # the command runs
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=TIMEOUT)
    assert job.returncode == -signal.SIGINT  # python ends by SIGINT on an unhandled KeyboardInterrupt
    assert stderr.splitlines()[-1] == "KeyboardInterrupt"
    assert "worker.py" not in stderr  # the traceback python prints, without the worker's frames
