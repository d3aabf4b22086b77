"""The committed dataset lock file (`config/datasets.lock.json`): sha256 and size of every fetched
file that has no published checksum.

The first download of a file records it; every later download must match it, so a silently changed
upstream file is refused instead of changing the results. Entries are recorded only after the whole
dataset unpacked cleanly, so a broken download never becomes the pinned one. Writes are atomic,
sorted and serialised across processes (parallel Snakemake jobs share the file).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from imagekv.io import read_json, write_json

LOCK_VERSION = 1
DEFAULT_LOCK_PATH = Path("config/datasets.lock.json")


class LockMismatchError(ValueError):
    """A file differs from the sha256 or size the lock file pinned for it."""


@dataclass(frozen=True)
class LockEntry:
    sha256: str
    size: int

    def as_json(self) -> dict:
        return {"sha256": self.sha256, "size": self.size}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def entry_of(path: Path) -> LockEntry:
    return LockEntry(sha256=file_digest(path), size=path.stat().st_size)


def lock_key(dataset: str, file_name: str) -> str:
    return f"{dataset}/{file_name}"


def read_lock(lock_path: Path) -> dict[str, LockEntry]:
    if not lock_path.exists():
        return {}
    data = read_json(lock_path)
    if data.get("version") != LOCK_VERSION:
        raise ValueError(f"{lock_path}: unsupported lock version {data.get('version')!r}, expected {LOCK_VERSION}")
    return {key: LockEntry(**value) for key, value in data["files"].items()}


def verify_against_lock(lock_path: Path, key: str, path: Path) -> LockEntry:
    """The entry of `path`; raises if the lock pins `key` to different content."""
    actual = entry_of(path)
    pinned = read_lock(lock_path).get(key)
    if pinned is not None and pinned != actual:
        raise LockMismatchError(
            f"{path} ({key}) does not match {lock_path}: pinned sha256 {pinned.sha256} size {pinned.size}, "
            f"got sha256 {actual.sha256} size {actual.size}. The upstream file changed or the download is "
            "corrupt; delete the cached file to retry, or delete the lock entry to accept the new file."
        )
    return actual


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path.with_name(f".{lock_path.name}.flock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def record_in_lock(lock_path: Path, entries: Mapping[str, LockEntry]) -> None:
    """Add `entries` (already verified) to the lock file; existing different entries are refused."""
    if not entries:
        return
    with _exclusive(lock_path):
        files = read_lock(lock_path)
        for key, entry in entries.items():
            if files.get(key, entry) != entry:
                raise LockMismatchError(f"{lock_path}: {key} is already pinned to different content")
            files[key] = entry
        write_json(lock_path, {"version": LOCK_VERSION, "files": {k: files[k].as_json() for k in sorted(files)}})
