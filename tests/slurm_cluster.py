"""A single-node Slurm cluster on localhost, for testing the workflow's Slurm profile.

`slurm_cluster` (session fixture) installs Debian's Slurm and munge if they are missing, writes a
slurm.conf into a temporary folder and starts munged, slurmctld and slurmd from it, with the node
offering one (fake) GPU so that GPU jobs are scheduled as on a real cluster. Settings follow
shared/notes/STACK.md ("Slurm on one machine"): no cgroups, no accounting database, every state,
spool, pid and log file under the temporary folder, munged on its own socket.

The jobstep plugin drops SLURM_CONF inside a job, so the nested `srun` reads /etc/slurm/slurm.conf:
the fixture links it there for the session and removes the link afterwards. Every process it
starts is stopped by its PID, and every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
START_TIMEOUT = 30  # seconds for the node to come up (well under a second when healthy)
STOP_TIMEOUT = 15


@dataclass(frozen=True)
class SlurmCluster:
    root: Path
    conf: Path

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for Slurm clients (sbatch, squeue, Snakemake's plugin) talking to this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def jobs(self) -> dict[int, dict[str, str]]:
        """Job id -> slurmctld's record of the job (JobState, TresPerJob, WorkDir, ...)."""
        result = subprocess.run(
            ["scontrol", "show", "job", "--oneliner"], env=self.env(), capture_output=True, text=True, timeout=30
        )
        result.check_returncode()
        jobs = {}
        for line in result.stdout.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if "JobId" in fields:
                jobs[int(fields["JobId"])] = fields
        return jobs

    def queued_jobs(self) -> list[str]:
        result = subprocess.run(
            ["squeue", "--noheader", "--format=%i"], env=self.env(), capture_output=True, text=True, timeout=30
        )
        result.check_returncode()
        return result.stdout.split()


def _install_if_missing() -> None:
    if all(shutil.which(name) for name in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"Slurm is not installed and cannot be installed here (needs root and apt-get): {PACKAGES}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], env=env, check=True, timeout=900)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/meminfo has no MemTotal line")


def _write_config(root: Path) -> SlurmCluster:
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=imagekvtest",
                "SlurmctldHost=localhost",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                # No cgroups on a test machine or in a container.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                # Without accounting, slurmctld's memory of finished jobs is how a test sees which
                # jobs ran and with what: keep them for a day instead of five minutes.
                "MinJobAge=86400",
                "MpiDefault=none",
                "ReturnToService=2",
                # Trust the node line below (the fake GPU has no device for slurmd to find).
                "SlurmdParameters=config_overrides",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                # One fake GPU (its "device" is /dev/null): GPU jobs are scheduled, queued and
                # accounted as on a GPU cluster; the code inside them finds no CUDA device.
                "GresTypes=gpu",
                f"NodeName=localhost CPUs={os.cpu_count()} RealMemory={_memory_mb()} Gres=gpu:1 State=UNKNOWN",
                "PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    (root / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n")
    return SlurmCluster(root=root, conf=conf)


def _start(args: list[str], cluster: SlurmCluster, started: list[subprocess.Popen]) -> None:
    log = open(cluster.root / "log" / f"{Path(args[0]).name}.stdout", "wb")
    started.append(
        subprocess.Popen(args, env=cluster.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    )
    log.close()


def _start_munged(cluster: SlurmCluster, started: list[subprocess.Popen]) -> None:
    munge = cluster.root / "munge"
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    _start(
        [
            "munged", "--foreground", "--force",
            f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
            f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={munge / 'munged.log'}",
        ],
        cluster,
        started,
    )
    _wait_for(lambda: (munge / "munge.socket").exists(), "munged to open its socket", cluster)


def _node_is_idle(cluster: SlurmCluster) -> bool:
    result = subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], env=cluster.env(), capture_output=True, text=True, timeout=10
    )
    return result.returncode == 0 and result.stdout.strip() == "idle"


def _wait_for(condition, what: str, cluster: SlurmCluster, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((cluster.root / "log").glob("*")))
            raise TimeoutError(f"waited {timeout} s for {what}; logs in {cluster.root / 'log'}:\n{logs}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def _cancel_all_jobs(cluster: SlurmCluster) -> None:
    subprocess.run(["scancel", "--full", "--partition=test"], env=cluster.env(), timeout=30, check=False)
    try:
        _wait_for(lambda: not cluster.queued_jobs(), "cancelled jobs to leave the queue", cluster, STOP_TIMEOUT)
    except (TimeoutError, subprocess.SubprocessError):
        pass  # the daemons are stopped next either way


def _link_system_conf(conf: Path) -> None:
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
        pytest.skip(f"{SYSTEM_CONF} exists: this machine has its own Slurm, which the test must not replace")
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.symlink_to(conf)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    _install_if_missing()
    cluster = _write_config(tmp_path_factory.mktemp("slurm"))
    _link_system_conf(cluster.conf)
    started: list[subprocess.Popen] = []
    try:
        _start_munged(cluster, started)
        _start(["slurmctld", "-D", "-f", str(cluster.conf)], cluster, started)
        _start(["slurmd", "-D", "-N", "localhost", "-f", str(cluster.conf)], cluster, started)
        _wait_for(lambda: _node_is_idle(cluster), "the node to become idle", cluster)
        yield cluster
    finally:
        if len(started) == 3:
            _cancel_all_jobs(cluster)
        for process in reversed(started):
            _stop(process)
        SYSTEM_CONF.unlink(missing_ok=True)
