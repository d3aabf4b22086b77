"""A warm worker: `python -m imagekv ...` without paying for the torch/transformers imports (issue 19).

Measured on the 2-core machines, importing torch, transformers with the model modules we use, pandas,
matplotlib and seaborn takes 8-9 s of CPU, more than half of the smoke run's job time. So the client
(`python -m imagekv`, which imports only the standard library) hands its command over a Unix socket
to a server that imported those libraries once, and the server forks one child per command. Each
Snakemake job stays its own job, with its own log, params and exit status:

- The child gets the client's stdin/stdout/stderr (passed with SCM_RIGHTS), cwd, umask, environment,
  sys.argv, sys.path, niceness and CPU affinity, then imports imagekv afresh (the server never keeps
  project code: an edit takes effect at the next job) and runs the command as `python` would: the
  same exit status, traceback and `SystemExit` message, atexit handlers and flushes.
- The server, not a thread in the child, watches each client's connection: when the client dies
  (kill -9, Snakemake's Ctrl-C, a test's kill) it SIGKILLs the child at once, even while the child
  holds the GIL in a long C call. Signals the client receives (INT, TERM, HUP) are forwarded, so a
  job interrupted through the worker dies as it would have in its own process. If the server dies,
  its children die with it (PR_SET_PDEATHSIG), and their clients report a failure.
- The server only imports: it never runs a torch op, so no OpenMP or intra-op thread pool (and no
  CUDA) exists before fork; each child starts its pools as a fresh process does. The math libraries
  read the same environment (MKL_DYNAMIC/OMP_DYNAMIC set as imagekv.cli sets them), and the outputs
  are byte-identical with and without the worker (tests/test_worker.py).
- One server per user and environment: its key hashes the interpreter, its flags, sys.path (without
  the script's folder), this file, and every environment variable the preimported libraries may read
  at import time (KEY_VARIABLES), and the cgroup. Another venv, PYTHONPATH or thread count (Snakemake
  sets OMP_NUM_THREADS to each job's threads) gets its own server.
- The socket lives in a 0700 folder of the user ($IMAGEKV_WORKER_DIR, else $XDG_RUNTIME_DIR/imagekv,
  else /tmp/imagekv-<uid>); the server accepts only its own uid (SO_PEERCRED). The first client
  starts it (detached, its output in <key>.log, no pipe of the caller held) under an flock, so
  concurrent clients start one; the others wait for it. When it cannot start within START_TIMEOUT,
  or the folder is not safe, the client says so on stderr and runs the command in its own process.
  The server exits when no command has run for $IMAGEKV_WORKER_IDLE seconds (default 60).
- A child runs in its server's control group (cgroup), so clients in another cgroup get another
  server; inside a Slurm job (SLURM_JOB_ID), where each job is its own cgroup that the scheduler ends
  with the job, every command runs in its own process.
- IMAGEKV_WORKER=off runs every command in its own process, as before. A `matplotlibrc` in the
  working directory (which matplotlib reads at import) also makes the client run in-process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

# The third-party modules that jobs import (measured with `python -X importtime` over the smoke run's
# commands): what the server imports once. A module missing here is imported by the child as usual.
PRELOAD = (
    "numpy", "PIL.Image", "scipy.ndimage", "scipy.optimize", "scipy.stats", "yaml", "jsonschema",
    "safetensors", "safetensors.torch", "torch", "torch.nn.functional", "transformers",
    "transformers.models.llava_next.modeling_llava_next",
    "transformers.models.llava_onevision.modeling_llava_onevision",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
    "transformers.models.qwen2_vl.image_processing_qwen2_vl",
    "transformers.models.siglip.modeling_siglip", "transformers.models.clip.modeling_clip",
    "pandas", "matplotlib", "matplotlib.pyplot", "seaborn",
    "matplotlib.backends.backend_pdf",  # with fontTools.subset: 0.18 s of CPU in every figure job
)
# Environment variables (by prefix) that the preimported libraries, the loader or the C runtimes may
# read at import time: a server is shared only by clients that agree on all of them.
KEY_VARIABLES = (
    "PYTHON", "LD_", "HF_", "HUGGINGFACE", "TRANSFORMERS_", "TOKENIZERS_", "SAFETENSORS_", "TORCH",
    "PYTORCH_", "CUDA", "NVIDIA_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS", "GOTO_", "VECLIB_",
    "NUMEXPR_", "BLIS_", "MPL", "MATPLOTLIB", "IMAGEKV_", "HOME", "XDG_", "TMP", "TEMP", "LANG", "LC_",
    "TZ",
)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
START_TIMEOUT = 180  # seconds a client waits for a server to import (about 10 s quiet, 30 s busy)
POLL = 0.05
HEADER = struct.Struct("!Q")


class WorkerUnavailable(Exception):
    """The command cannot go through a server: run it in this process."""


class NotStarted(WorkerUnavailable):
    """The server closed the connection before starting the command (it was exiting): try again."""


# ---------------------------------------------------------------- client


def main(entry: str = "imagekv.cli:main") -> None:
    """Run `entry` (module:function, reading sys.argv) through the worker, or here when there is none."""
    mode = os.environ.get("IMAGEKV_WORKER", "on")
    if mode not in ("on", "off"):
        raise SystemExit(f"IMAGEKV_WORKER={mode!r}: expected 'on' (the default) or 'off'")
    if mode == "off" or "SLURM_JOB_ID" in os.environ:
        return _call(entry)
    for _ in range(2):  # a server that was just exiting may drop a connection it never started
        try:
            _exit_like(_run_remote(_connect(), entry))
        except NotStarted as why:
            reason = why
        except WorkerUnavailable as why:
            reason = why
            break
    print(f"imagekv: no worker ({reason}); running in this process", file=sys.stderr, flush=True)
    _call(entry)


def _call(entry: str) -> None:
    module, _, function = entry.partition(":")
    __import__(module)
    getattr(sys.modules[module], function)()


def _run_remote(conn: socket.socket, entry: str) -> tuple[str, int]:
    """Send the command and this process's stdio; return the child's ("exit" | "signal", number)."""
    request = json.dumps({
        "entry": entry, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
        "umask": _umask(), "nice": os.getpriority(os.PRIO_PROCESS, 0), "cpus": sorted(os.sched_getaffinity(0)),
    }).encode()

    pending: list[int] = []  # signals that came before the request was sent whole

    def forward(number, _frame):
        if pending is None:
            with contextlib.suppress(OSError):
                conn.sendall(f"signal {number}\n".encode())
        else:
            pending.append(number)

    previous = {number: signal.signal(number, forward) for number in FORWARDED_SIGNALS}
    try:
        socket.send_fds(conn, [HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        queued, pending = pending, None  # the server passes signals on to the child from now on
        for number in queued:
            conn.sendall(f"signal {number}\n".encode())
        replies = conn.makefile("rb")
        started = replies.readline()
        if not started.startswith(b"started "):
            raise OSError(errno.ECONNRESET, "closed before starting the command")
    except OSError as error:
        for number, handler in previous.items():  # this process may run the command itself: as before
            signal.signal(number, handler)
        for number in pending or ():
            os.kill(os.getpid(), number)
        raise NotStarted(f"the server dropped the connection: {error}") from None
    outcome = replies.readline().split()
    if len(outcome) != 2 or outcome[0] not in (b"exit", b"signal"):
        print("imagekv: the worker process of this command ended without an exit status", file=sys.stderr)
        return "exit", 1
    return outcome[0].decode(), int(outcome[1])


def _exit_like(status: tuple[str, int]) -> None:
    """End this process as the child ended: with its exit code, or killed by its signal."""
    kind, number = status
    sys.stdout.flush()
    sys.stderr.flush()
    if kind == "signal":
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        time.sleep(1)  # a stopped-not-killed signal would land here; exit as a shell reports it
        os._exit(128 + number)
    os._exit(number)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def server_key(path: list[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """What a server shares with its clients: interpreter, flags, import path, this file, import-time env."""
    environ = os.environ if environ is None else environ
    path = sys.path[1:] if path is None else path  # sys.path[0] is the script's folder or the cwd
    key = {
        "python": sys.executable, "flags": subprocess._args_from_interpreter_flags(), "path": path,
        "worker": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), "uid": os.getuid(),
        "env": sorted((name, value) for name, value in environ.items() if name.startswith(KEY_VARIABLES)),
        "cgroup": _cgroup(),
    }
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


def _cgroup() -> str:
    """This process's control groups: a child runs in its server's, whose limits and end it shares."""
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""


def worker_dir() -> Path:
    """The user's private folder of sockets, made 0700 if missing; refused if anyone else could use it."""
    configured = os.environ.get("IMAGEKV_WORKER_DIR")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(configured) if configured else Path(runtime, "imagekv") if runtime else \
        Path(f"/tmp/imagekv-{os.getuid()}")
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError as error:
        raise WorkerUnavailable(f"cannot make the worker folder {folder}: {error}") from None
    if not os.path.isdir(folder) or os.path.islink(folder) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise WorkerUnavailable(f"{folder} is not a folder that only this user can use (expected mode 0700)")
    return folder


def _connect() -> socket.socket:
    if os.path.exists("matplotlibrc"):
        raise WorkerUnavailable("matplotlib reads ./matplotlibrc at import, which the server did elsewhere")
    base = worker_dir() / server_key()
    return _try_connect(base.with_suffix(".sock")) or _start_server(base)


def _try_connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _start_server(base: Path) -> socket.socket:
    """Start the server unless a concurrent client did (flock), and wait until it accepts."""
    deadline = time.monotonic() + START_TIMEOUT
    with open(base.with_suffix(".lock"), "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WorkerUnavailable("another client has been starting the server for too long") from None
                time.sleep(POLL)
        conn = _try_connect(base.with_suffix(".sock"))
        if conn is not None:
            return conn
        with open(base.with_suffix(".log"), "wb") as log:
            server = subprocess.Popen(
                [sys.executable, *subprocess._args_from_interpreter_flags(), "-c",
                 "import sys, imagekv.worker as w; w.serve(sys.argv[1], sys.argv[2])", str(base), json.dumps(sys.path[1:])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True, close_fds=True,
            )
        while time.monotonic() < deadline:
            conn = _try_connect(base.with_suffix(".sock"))
            if conn is not None:
                return conn
            if server.poll() is not None:
                raise WorkerUnavailable(f"the server exited with {server.returncode}; see {base.with_suffix('.log')}")
            time.sleep(POLL)
        raise WorkerUnavailable(f"the server did not start within {START_TIMEOUT} s; see {base.with_suffix('.log')}")


# ---------------------------------------------------------------- server


def serve(base: str, path: str) -> None:
    """Import PRELOAD, then fork a child for each command until idle; `path` is the clients' sys.path."""
    sys.path[:] = json.loads(path)
    socket_path = Path(base).with_suffix(".sock")
    idle = float(os.environ.get("IMAGEKV_WORKER_IDLE", "60"))
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = socket_path.with_name(f"{socket_path.name}.{os.getpid()}")
    listener.bind(str(staging))
    listener.listen(64)
    os.replace(staging, socket_path)  # clients see the socket only once the imports are done
    inode = os.stat(socket_path).st_ino
    Path(base).with_suffix(".pid").write_text(f"{os.getpid()}\n")
    print(f"worker {os.getpid()} serving on {socket_path}", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # child pid -> its client's connection
    last_active = time.monotonic()
    while children or time.monotonic() - last_active < idle:
        for event, _ in selector.select(timeout=0.2):
            if event.fileobj is listener:
                _accept(listener, selector, children)
            else:
                _client_message(event.fileobj, event.data, selector)
        _reap(children, selector)
        if children:
            last_active = time.monotonic()  # idle counts from the end of the last command
    with contextlib.suppress(OSError):
        if os.stat(socket_path).st_ino == inode:  # not a newer server's socket
            os.unlink(socket_path)
    print(f"worker {os.getpid()} idle for {idle:g} s: exiting", flush=True)


def _preload() -> None:
    import importlib

    for variable in ("MKL_DYNAMIC", "OMP_DYNAMIC"):  # as imagekv.cli.main sets them, before torch loads
        os.environ.setdefault(variable, "FALSE")
    import matplotlib

    matplotlib.use("Agg")  # what imagekv.figures.style selects; no display is ever looked for
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - the child imports it itself (and reports any error)
            print(f"not preloaded: {module}: {error!r}", flush=True)


def _accept(listener: socket.socket, selector, children: dict[int, socket.socket]) -> None:
    conn, _ = listener.accept()
    fds = []
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            raise OSError(errno.EPERM, f"a client of uid {uid}")
        conn.settimeout(10)
        header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
        header += _receive(conn, HEADER.size - len(header))
        request = json.loads(_receive(conn, HEADER.unpack(header)[0]))
        if len(fds) != 3:
            raise OSError(errno.EBADF, "a request without its three standard streams")
        conn.settimeout(None)
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(request, fds, server, [listener, conn, *children.values()], selector)
        conn.sendall(f"started {pid}\n".encode())
        children[pid] = conn
        selector.register(conn, selectors.EVENT_READ, pid)
    except (OSError, ValueError) as error:
        print(f"refused a request: {error!r}", flush=True)
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)


def _receive(conn: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = conn.recv(min(size, 1 << 20))
        if not chunk:
            raise OSError(errno.ECONNRESET, "the client closed the connection mid-request")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _client_message(conn: socket.socket, pid: int, selector) -> None:
    """A forwarded signal, or the end of the client: then its command must not outlive it."""
    try:
        data = conn.recv(4096)
    except OSError:
        data = b""
    if not data:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still this child's
        selector.unregister(conn)
        return
    for line in data.split(b"\n"):
        if line.startswith(b"signal "):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(pid, int(line.split()[1]))


def _reap(children: dict[int, socket.socket], selector) -> None:
    """Tell each finished child's client how it ended, and close the connection."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        ended = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}"
        with contextlib.suppress(OSError):
            conn.sendall(f"{ended}\n".encode())
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        conn.close()


# ---------------------------------------------------------------- child


def _child(request: dict, fds: list[int], server: int, sockets: list[socket.socket], selector) -> None:
    """In the forked child: become the client's process, run the command, and exit as python would."""
    code = 1
    try:
        _die_with(server)
        selector.close()  # closes this process's epoll descriptor only: the server's registrations stay
        for other in sockets:
            other.close()  # a client must see its end only when its own child and the server close
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _become_client(request)
        code = _run(request["entry"])
    finally:
        os._exit(code)


def _die_with(server: int) -> None:
    import ctypes

    PR_SET_PDEATHSIG = 1  # linux/prctl.h
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server:  # the server died before prctl took effect
        os._exit(1)


def _become_client(request: dict) -> None:
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, request["nice"])  # only ever nicer than the server
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, request["cpus"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv[:] = request["argv"]
    sys.path[:] = request["path"]
    for name in [name for name in sys.modules if name == "imagekv" or name.startswith("imagekv.")]:
        del sys.modules[name]  # the project's code as it is now, not as the server saw it
    sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())


def _run(entry: str) -> int:
    """Run entry as the interpreter runs a script: its exit code, or SystemExit's, or 1 with a traceback."""
    import atexit
    import threading

    try:
        _call(entry)
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except KeyboardInterrupt:
        _report_uncaught()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # python exits by SIGINT on an unhandled KeyboardInterrupt
        code = 130
    except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
        _report_uncaught()
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    _flush()
    return code


def _report_uncaught() -> None:
    """The traceback python prints, without this module's frames."""
    kind, error, trace = sys.exc_info()
    while trace is not None and trace.tb_frame.f_code.co_filename == __file__:
        trace = trace.tb_next
    sys.excepthook(kind, error.with_traceback(trace), trace)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
