"""Atomic, deterministic file writing: no reader ever sees a half-written output.

Every writer gets its own temporary file, named after the target, this host and its process id, so
writers of one target (threads, processes, users) never touch each other's files; the last rename
wins and readers see one complete version. Outputs get the modes a plain `open()` or `mkdir()` gives
under the umask (0644 files and 0755 folders by default), so a cache written by one user can be read
by another.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
# Short and free of dots, so it can sit in a file name that is parsed back.
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    The temporary file lives in the same directory so the final `os.replace` is atomic. The block
    may write the path or replace it (safetensors does, with a 0600 file): the mode is set just
    before the rename. Leftovers of writers on this host whose process is gone (SIGKILL skips the
    cleanup below) are removed; a live writer's file, or another host's, is never touched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}-{os.getpid()}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _remove_stale_temporaries(target: Path) -> None:
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{_HOST}-(\d+)\.[^.]+\.partial")
    for path in target.parent.glob(f".{glob.escape(target.name)}.{_HOST}-*.partial"):
        match = pattern.fullmatch(path.name)
        if match and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Sorted keys and a trailing newline, so equal content gives identical bytes."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON at `path`; a parse error names the file (and stays a JSONDecodeError)."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise json.JSONDecodeError(f"{path}: {error.msg}", error.doc, error.pos) from None
