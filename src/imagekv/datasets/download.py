"""Download, verify and safely unpack a real dataset into `data/real/<name>` for the paper run.

`fetch_dataset` is what the Snakemake download rule calls. A file is fetched over HTTP into
`<cache>/<dataset>/<file>.partial`, resumed with a Range request after a dropped connection (a
partial response is appended only if its Content-Range starts where the file ends) and retried with
exponential backoff; a failure to write the local disk is not retried. Only a complete file loses
the `.partial` suffix. It must look like what it should be (archive magic bytes, not an HTML page)
and match the publisher checksum, or else the committed lock file (see `lockfile`); a file without
either is trusted on first use and pinned, which the log says, and `require_pin` (`--verify-lock`)
refuses. A cached file that fails any check is deleted, so a rerun fetches it again. Archives
unpack into a temporary folder beside the target, member by member, refusing absolute paths, `..`,
links that leave the folder and device files. The folder becomes the target by one `os.replace`,
with a `.complete` marker inside, so a failure leaves no target and nothing marked complete, while
the `.partial` download stays in the cache to resume from.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from imagekv.datasets.lockfile import (
    DEFAULT_LOCK_PATH,
    LockEntry,
    LockMismatchError,
    file_digest,
    lock_key,
    read_lock,
    record_in_lock,
    verify_against_lock,
)
from imagekv.datasets.sources import ROUTE_BUILDERS, Archive, DatasetSource, HubSnapshot, source_of

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
CHUNK_BYTES = 1 << 20
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
# Leading bytes of each archive kind: zip local header or empty archive (APPNOTE.TXT 4.3.7, 4.3.16),
# gzip (RFC 1952), POSIX/GNU tar "ustar" at offset 257 (POSIX.1-1988 ustar header).
MAGIC = {
    "zip": ((0, b"PK\x03\x04"), (0, b"PK\x05\x06")),
    "tar.gz": ((0, b"\x1f\x8b"),),
    "tgz": ((0, b"\x1f\x8b"),),
    "tar": ((257, b"ustar"),),
}
HTML_START = re.compile(rb"\s*(<!doctype html|<html|<head|<body|<\?xml)", re.IGNORECASE)
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A dataset could not be fetched, verified or unpacked; nothing was marked complete."""


class ChecksumError(DownloadError):
    pass


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the dataset folder or is not a plain file or folder."""


class LocalWriteError(DownloadError):
    """The local disk refused a write (full, read-only, no permission): not retried."""


class WrongContentError(DownloadError):
    """The received file is not of the expected kind (an HTML page instead of an archive, say)."""


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all, waiting `base_seconds * 2**k` (capped) after failure k; `sleep` is
    injectable so tests need not wait."""

    attempts: int = 6
    base_seconds: float = 2.0
    max_seconds: float = 120.0
    timeout_seconds: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, failure: int) -> float:
        return min(self.base_seconds * 2**failure, self.max_seconds)


# --- HTTP ---------------------------------------------------------------------------------------


class _Incomplete(Exception):
    """The server closed the body early; the bytes so far stay in the `.partial` file."""


def _is_retryable(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code in RETRYABLE_HTTP
    return isinstance(error, (urllib.error.URLError, http.client.HTTPException, OSError, _Incomplete))


def _append_response(url: str, partial: Path, timeout: float) -> None:
    """Fetch `url` into `partial`, asking only for the bytes it lacks."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # our partial is longer than the file: start over
            partial.unlink()
            raise _Incomplete(f"{url}: server refused the range from byte {have}; restarting") from error
        raise
    with response:
        resumed = response.status == 206
        if resumed:
            _check_content_range(url, partial, have, response.headers.get("Content-Range"))
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        written = 0
        out = _local_write(partial, lambda: open(partial, "ab" if resumed else "wb"))
        try:
            while chunk := response.read(CHUNK_BYTES):
                _local_write(partial, lambda: out.write(chunk))
                written += len(chunk)
        finally:
            _local_write(partial, out.close)
    if expected is not None and written < expected:
        raise _Incomplete(f"{url}: got {written} of {expected} bytes")


def _check_content_range(url: str, partial: Path, have: int, content_range: str | None) -> None:
    """A partial response must continue the file exactly where it ends; else the file starts over."""
    match = CONTENT_RANGE.fullmatch((content_range or "").strip())
    if match is None or int(match.group(1)) != have:
        partial.unlink(missing_ok=True)
        raise _Incomplete(f"{url}: asked for bytes from {have}, the partial response says Content-Range "
                          f"{content_range!r}; discarding {partial} and starting over")


def _local_write(path: Path, action: Callable[[], object]) -> object:
    try:
        return action()
    except OSError as error:
        raise LocalWriteError(f"{path}: cannot write the download to the local disk: {error}") from error


def download_url(url: str, destination: Path, retry: RetryPolicy = RetryPolicy()) -> Path:
    """Download `url` to `destination` through `destination.partial`, resuming and retrying."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    for failure in itertools.count():
        try:
            _append_response(url, partial, retry.timeout_seconds)
            break
        except LocalWriteError:
            raise
        except Exception as error:  # noqa: BLE001 - sorted into retryable or not just below
            if not _is_retryable(error) or failure + 1 >= retry.attempts:
                raise DownloadError(f"{url}: download failed after {failure + 1} attempt(s): {error}") from error
            retry.sleep(retry.delay(failure))
    os.replace(partial, destination)
    return destination


# --- Getting one file ---------------------------------------------------------------------------


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def _candidate_urls(archive: Archive, base_url_override: str | None, user_files: Mapping[str, str]) -> list[str]:
    if archive.name in user_files:
        return [user_files[archive.name]]
    if base_url_override:
        return [f"{base_url_override.rstrip('/')}/{archive.name}"]
    return list(archive.urls)


def obtain(
    archive: Archive,
    folder: Path,
    *,
    base_url_override: str | None = None,
    user_files: Mapping[str, str] | None = None,
    retry: RetryPolicy = RetryPolicy(),
) -> Path:
    """A local, complete copy of `archive`: a user's file is used in place; a URL is cached in `folder`."""
    locations = _candidate_urls(archive, base_url_override, user_files or {})
    if not locations:
        raise DownloadError(f"{archive.name} has no public URL: {archive.note or 'supply its path or URL'}")
    cached = folder / archive.name
    if cached.exists():
        return cached
    errors = []
    for location in locations:
        if _is_local(location):
            path = Path(location.removeprefix("file://")).expanduser()
            if not path.is_file():
                raise DownloadError(f"{archive.name}: the supplied file {path} does not exist")
            return path
        try:
            return download_url(location, cached, retry)
        except LocalWriteError:  # no mirror helps
            raise
        except DownloadError as error:
            errors.append(str(error))
    raise DownloadError(f"{archive.name}: every source failed:\n  " + "\n  ".join(errors))


def verify_kind(archive: Archive, path: Path) -> None:
    """`path` starts like an archive of its kind, and is no HTML or XML page (a server's error or login page)."""
    with open(path, "rb") as handle:
        head = handle.read(1024)
    html = HTML_START.match(head) is not None
    magic = MAGIC.get(archive.kind)
    if html or (magic and not any(head[offset : offset + len(tag)] == tag for offset, tag in magic)):
        what = "an HTML or XML page (an error or login page?)" if html else f"no {archive.kind} archive"
        raise WrongContentError(f"{path}: expected {archive.name} ({archive.kind}), got {what}; starts {head[:16]!r}")


def verify_published(archive: Archive, path: Path) -> None:
    """Check the publisher's checksums of `archive` against the file at `path`."""
    for algorithm, expected in (("md5", archive.md5), ("sha256", archive.sha256)):
        if expected is not None and (actual := file_digest(path, algorithm)) != expected:
            raise ChecksumError(
                f"{path}: {algorithm} {actual} does not match the published {expected} for {archive.name}"
            )


# --- Safe unpacking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    name: str
    kind: str  # file, dir, symlink, hardlink, other
    link: str
    mode: int
    open: Callable[[], IO[bytes]]


def _tar_members(path: Path) -> Iterator[_Member]:
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            kind = (
                "file"
                if info.isreg()
                else "dir" if info.isdir() else "symlink" if info.issym() else "hardlink" if info.islnk() else "other"
            )
            yield _Member(info.name, kind, info.linkname, info.mode, lambda info=info: tar.extractfile(info))


def _zip_members(path: Path) -> Iterator[_Member]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                yield _Member(info.filename, "symlink", archive.read(info).decode("utf-8"), mode, lambda: None)
            elif info.is_dir():
                yield _Member(info.filename.rstrip("/"), "dir", "", mode, lambda: None)
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # many writers leave the type bits empty
                yield _Member(info.filename, "other", "", mode, lambda: None)
            else:
                yield _Member(info.filename, "file", "", mode, lambda info=info: archive.open(info))


def _members(path: Path, kind: str) -> Iterator[_Member]:
    if kind == "zip":
        return _zip_members(path)
    if kind in ("tar", "tar.gz", "tgz"):
        return _tar_members(path)
    raise DownloadError(f"{path}: unsupported archive type {kind!r}")


def _safe_relative(archive: Path, member: str, name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {member!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {member!r} escapes the target with '..'")
    return path


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _place(archive: Path, member: str, root: Path, relative: PurePosixPath) -> Path:
    """`root/relative`, cleared for writing, once its real parent folder (links resolved) is inside root."""
    destination = root / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not _inside(os.path.realpath(root), os.path.realpath(destination.parent)):
        raise UnsafeArchiveError(f"{archive}: member {member!r} would be written through a link outside the target")
    if destination.is_symlink() or destination.is_file():
        destination.unlink()  # a later member replaces an earlier one, never writes through it
    return destination


def unpack(archive: Path, kind: str, root: Path, route: Callable[[str], str | None]) -> int:
    """Unpack the members `route` places into `root`; returns how many were unpacked."""
    real_root = os.path.realpath(root)
    placed: dict[str, Path] = {}
    try:
        for member in _members(archive, kind):
            name = _safe_relative(archive, member.name, member.name).as_posix()  # also drops "./"
            target = route(name)
            if target is None:
                continue
            if member.kind == "other":
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, fifo or socket")
            destination = _place(archive, member.name, root, _safe_relative(archive, member.name, target))
            if member.kind == "dir":
                destination.mkdir(exist_ok=True)
            elif member.kind == "symlink":
                resolved = os.path.normpath(os.path.join(os.path.realpath(destination.parent), member.link))
                if os.path.isabs(member.link) or not _inside(real_root, resolved):
                    raise UnsafeArchiveError(f"{archive}: symlink {member.name!r} -> {member.link!r} points outside")
                os.symlink(member.link, destination)
            elif member.kind == "hardlink":
                link = _safe_relative(archive, member.name, member.link).as_posix()
                if link not in placed:
                    raise UnsafeArchiveError(
                        f"{archive}: hardlink {member.name!r} -> {member.link!r} targets a member outside the target"
                    )
                shutil.copyfile(placed[link], destination)
            else:
                with member.open() as source, open(destination, "xb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
            placed[name] = destination
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise DownloadError(f"{archive}: corrupt or truncated archive: {error}") from error
    if not placed:
        raise DownloadError(f"{archive}: no member matched the expected layout; is this the right file?")
    return len(placed)


# --- Whole datasets -----------------------------------------------------------------------------


def _install_archive(archive: Archive, local: Path, staging: Path) -> None:
    if archive.kind == "file":
        shutil.copyfile(local, staging / archive.into / archive.name)
        return
    route = ROUTE_BUILDERS[archive.route_builder](staging) if archive.route_builder else archive.route
    unpack(local, archive.kind, staging, route)


def _fetch_hub(hub: HubSnapshot, staging: Path, cache: Path) -> list[Path]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(
            repo_id=hub.repo_id,
            repo_type=hub.repo_type,
            revision=hub.revision,
            allow_patterns=list(hub.allow_patterns),
            local_dir=staging,
            cache_dir=cache,
        )
    except LocalEntryNotFoundError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        hint = " HF_HUB_OFFLINE is set: unset it to download, or pre-fill the hub cache." if offline else ""
        raise DownloadError(f"{hub.repo_id}@{hub.revision} is not available locally.{hint} ({error})") from error
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # the hub client's bookkeeping, not data
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    if not files:
        raise DownloadError(f"{hub.repo_id}@{hub.revision}: no file matches {list(hub.allow_patterns)}")
    return files


def fetch_dataset(
    name: str,
    target: Path,
    sources: Mapping[str, DatasetSource] | None = None,
    lock_path: Path = DEFAULT_LOCK_PATH,
    base_url_override: str | None = None,
    *,
    cache_dir: Path | None = None,
    user_files: Mapping[str, str] | None = None,
    retry: RetryPolicy = RetryPolicy(),
    keep_downloads: bool = False,
    require_pin: bool = False,
) -> None:
    """Make `target` hold dataset `name` in its published layout, verified; a no-op when complete.

    `cache_dir` (default `<target parent>/.downloads`) keeps `<name>/<file>.partial` across failures;
    `user_files` maps an archive name to a local path or URL (licensed data such as ImageNet);
    `base_url_override` fetches every archive from `<base>/<archive name>` instead (a mirror);
    `require_pin` refuses any file with neither a publisher checksum nor a pin in the lock file.
    """
    target, lock_path = Path(target), Path(lock_path)
    if (target / COMPLETE_MARKER).exists():
        return
    if target.exists():
        raise DownloadError(f"{target} exists but is not marked {COMPLETE_MARKER}; remove it and rerun")
    source = source_of(name, dict(sources) if sources is not None else None)
    folder = Path(cache_dir or target.parent / ".downloads") / name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.unpacking")  # a fixed name: a killed run's is cleared here
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        pinned = _install_all(
            source, staging, folder, lock_path, base_url_override, user_files or {}, retry, require_pin
        )
        record_in_lock(lock_path, pinned)
        marker = {"dataset": name, "files": {key: entry.as_json() for key, entry in sorted(pinned.items())}}
        (staging / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_downloads:
        shutil.rmtree(folder, ignore_errors=True)


def _install_all(
    source: DatasetSource,
    staging: Path,
    folder: Path,
    lock_path: Path,
    base_url_override: str | None,
    user_files: Mapping[str, str],
    retry: RetryPolicy,
    require_pin: bool,
) -> dict[str, LockEntry]:
    """Fetch, verify and unpack every file of `source`; returns the lock entries to record."""
    missing = [f"{a.name} ({a.note})" for a in source.archives if not a.urls and a.name not in user_files]
    if missing:  # reported before any long download, not after it
        raise DownloadError(f"{source.name} needs files only you can supply (user_files): " + "; ".join(missing))
    known = read_lock(lock_path)
    if require_pin:
        unchecked = [lock_key(source.name, a.name) for a in source.archives if a.md5 is None and a.sha256 is None]
        _refuse_unpinned(unchecked, known, lock_path)
    pinned: dict[str, LockEntry] = {}
    for archive in source.archives:
        local = obtain(archive, folder, base_url_override=base_url_override, user_files=user_files, retry=retry)
        try:
            verify_kind(archive, local)
            verify_published(archive, local)
            if archive.md5 is None and archive.sha256 is None:
                key = lock_key(source.name, archive.name)
                pinned[key] = _pin(lock_path, key, local, known)
            _install_archive(archive, local, staging)
        except (DownloadError, LockMismatchError):
            if local.parent == folder:  # our own download failed a check: never reuse it; a user's file stays
                local.unlink(missing_ok=True)
            raise
    if source.hub is not None:
        files = _fetch_hub(source.hub, staging, folder / "hub")
        published = {path: source.hub.published_sha256(path.relative_to(staging).as_posix()) for path in files}
        for path, expected in published.items():
            if expected is not None and (actual := file_digest(path, "sha256")) != expected:
                shutil.rmtree(folder / "hub", ignore_errors=True)  # never reused
                raise ChecksumError(
                    f"{path}: sha256 {actual} does not match the published {expected} "
                    f"({source.hub.repo_id}@{source.hub.revision})"
                )
        keys = {lock_key(source.name, p.relative_to(staging).as_posix()): p for p, e in published.items() if e is None}
        if require_pin:
            _refuse_unpinned(sorted(keys), known, lock_path)
        for key, path in keys.items():
            pinned[key] = _pin(lock_path, key, path, known)
    return pinned


def _refuse_unpinned(keys: list[str], known: Mapping[str, LockEntry], lock_path: Path) -> None:
    unpinned = [key for key in keys if key not in known]
    if unpinned:
        raise DownloadError(
            f"{', '.join(unpinned)}: no published checksum and no pin in {lock_path}; --verify-lock refuses to "
            "trust a first download. Run once without it to pin the files, and check the pins."
        )


def _pin(lock_path: Path, key: str, path: Path, known: Mapping[str, LockEntry]) -> LockEntry:
    """The lock entry of `path`, checked against its pin; a first download is trusted, and says so."""
    entry = verify_against_lock(lock_path, key, path)
    if key not in known:
        log.warning(
            "%s has no published checksum and no pin in %s: TRUSTING THIS FIRST DOWNLOAD (trust on first use) "
            "and pinning sha256 %s, %d bytes. Later downloads must match it; check it if you can.",
            key, lock_path, entry.sha256, entry.size,
        )
    return entry
