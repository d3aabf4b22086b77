"""The paper-run download path against a local HTTP server on 127.0.0.1 (never the real network).

Archives are built from each dataset's synthetic twin in the layout of the real archive (the real
catalogue entry's prefix and routing, checksums removed), served, fetched, verified, unpacked and
then read by the dataset's own loader, whose output must equal what it reads from the twin itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import logging
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from imagekv.datasets import load_dataset
from imagekv.datasets.blink import PUBLISHED_SUBTASKS
from imagekv.datasets.download import (
    COMPLETE_MARKER,
    ChecksumError,
    DownloadError,
    RetryPolicy,
    UnsafeArchiveError,
    WrongContentError,
    fetch_dataset,
)
from imagekv.datasets.lockfile import LockMismatchError, read_lock
from imagekv.datasets.sources import SOURCES, Archive, DatasetSource
from imagekv.datasets.synthetic import write_synthetic

from smoke_config import SMOKE_DATASETS as SMOKE


# --- A small HTTP server with Range support and scripted failures ------------------------------


class Server:
    """Serves `files` by name; `fail[name]` 503s left, `drop[name]` bytes to send before hanging up once,
    `ignore_range`: names whose partial responses start at byte 0 whatever was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail: dict[str, int] = {}
        self.drop: dict[str, int] = {}
        self.ignore_range: set[str] = set()  # answer a Range request with 206 and the whole file
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if server.fail.get(name, 0) > 0:
                    server.fail[name] -= 1
                    self.send_error(503)
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = 0 if name in server.ignore_range else int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.drop.pop(name, None)
                self.wfile.write(body[start:cut] if cut is not None else body[start:])
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    serving = Server()
    yield serving
    serving.close()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def retry(sleeps):
    return RetryPolicy(attempts=4, base_seconds=0.5, timeout_seconds=5, sleep=sleeps.append)


# --- Building archives --------------------------------------------------------------------------


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in sorted(members.items()):
            archive.writestr(name, data)
    return buffer.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w", special: tuple[tarfile.TarInfo, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in special:
            archive.addfile(info)
    return buffer.getvalue()


def pack(kind: str, members: dict[str, bytes]) -> bytes:
    return make_zip(members) if kind == "zip" else make_tar(members, "w:gz" if kind in ("tgz", "tar.gz") else "w")


def unchecked(name: str) -> DatasetSource:
    """The real catalogue entry of `name` without publisher checksums (our archives differ from theirs)."""
    source = SOURCES[name]
    return dataclasses.replace(
        source, archives=tuple(dataclasses.replace(a, md5=None, sha256=None) for a in source.archives)
    )


def inside(archive: Archive, relative: str) -> str:
    """A path under the dataset root, relative to the archive's `into` folder."""
    return relative.removeprefix(f"{archive.into}/") if archive.into else relative


def members_by_archive(source: DatasetSource, twin: Path) -> dict[str, dict[str, bytes]]:
    """Each twin file as the member of the archive whose route places it there (the inverse route)."""
    by_archive: dict[str, dict[str, bytes]] = {a.name: {} for a in source.archives}
    for path in sorted(p for p in twin.rglob("*") if p.is_file()):
        relative = path.relative_to(twin).as_posix()
        owner = next(
            (
                a
                for a in source.archives
                if a.kind != "file" and a.route(a.strip + inside(a, relative)) == relative
            ),
            None,
        )
        assert owner is not None, f"no archive of {source.name} delivers {relative}"
        by_archive[owner.name][owner.strip + inside(owner, relative)] = path.read_bytes()
    return by_archive


def loaded(name: str, root: Path) -> tuple[list[str], bytes]:
    dataset = load_dataset(name, root, {**SMOKE[name], "derived_dir": str(root.with_name(f"{root.name}-derived"))})
    return [ref.image_id for ref in dataset.images()], pickle.dumps(list(dataset.samples()))


def fetch(name: str, target: Path, server: Server, retry: RetryPolicy, source: DatasetSource, **kwargs) -> None:
    lock = kwargs.pop("lock_path", target.parent / "datasets.lock.json")
    fetch_dataset(name, target, {name: source}, lock, server.url, retry=retry, **kwargs)


def assert_nothing_installed(target: Path) -> None:
    assert not target.exists()
    assert not list(target.parent.glob(f".{target.name}.*")), "a staging folder was left behind"


# --- The whole path: download -> verify -> unpack -> load ---------------------------------------


@pytest.mark.parametrize("name", ["pascal5i", "davis", "spair", "msrc", "refcoco", "coco_pool"])
def test_served_twin_unpacks_into_what_the_loader_reads(tmp_path, server, retry, name):
    twin = tmp_path / "twin"
    write_synthetic(name, twin, SMOKE[name], seed=5)
    source = unchecked(name)
    for archive in source.archives:
        server.files[archive.name] = pack(archive.kind, members_by_archive(source, twin)[archive.name])
    server.files["distractor"] = b""
    target = tmp_path / "real" / name
    fetch(name, target, server, retry, source)
    assert (target / COMPLETE_MARKER).exists()
    assert loaded(name, target) == loaded(name, twin)
    lock = read_lock(tmp_path / "real" / "datasets.lock.json")
    assert sorted(lock) == sorted(f"{name}/{a.name}" for a in source.archives)
    assert not (tmp_path / "real" / ".downloads" / name).exists(), "downloads are dropped once installed"


def test_imagenet_s_takes_the_licensed_images_from_a_user_file(tmp_path, server, retry):
    twin = tmp_path / "twin"
    write_synthetic("imagenet_s", twin, SMOKE["imagenet_s"], seed=5)
    images = {p.name: p.read_bytes() for p in (twin / "validation").glob("*/*.JPEG")}
    images["ILSVRC2012_val_99999999.JPEG"] = b"not annotated by ImageNet-S: skipped"
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "val.tar").write_bytes(make_tar(images))
    segmentation = {
        f"ImageNetS50/{p.relative_to(twin).as_posix()}": p.read_bytes()
        for p in twin.glob("validation-segmentation/*/*")
    }
    server.files = {"ImageNetS50-a0fe9d82231f9bc4787ee76e304dfa51.zip": make_zip(segmentation)}
    user_files = {"ILSVRC2012_img_val.tar": str(tmp_path / "user" / "val.tar")}
    target = tmp_path / "real" / "imagenet_s"
    with pytest.raises(DownloadError, match=r"user_files\): ILSVRC2012_img_val.tar \(ImageNet val needs"):
        fetch("imagenet_s", target, server, retry, unchecked("imagenet_s"))
    assert_nothing_installed(target)
    assert server.requests == [], "the missing licensed file is reported before any download"
    fetch("imagenet_s", target, server, retry, unchecked("imagenet_s"), user_files=user_files)
    assert loaded("imagenet_s", target) == loaded("imagenet_s", twin)
    assert not list(target.rglob("ILSVRC2012_val_99999999.JPEG"))
    assert (tmp_path / "user" / "val.tar").exists(), "a user's file is never moved or deleted"


# --- Resume, retries, checksums -----------------------------------------------------------------

DAVIS_MEMBERS = {"DAVIS/ImageSets/2017/val.txt": b"clip\n", "DAVIS/JPEGImages/480p/clip/00000.jpg": b"x" * 5000}


def davis_zip_source(**archive_fields) -> DatasetSource:
    archive = Archive(name="davis.zip", urls=("http://unused.invalid/davis.zip",), kind="zip", strip="DAVIS/")
    return DatasetSource(name="davis", archives=(dataclasses.replace(archive, **archive_fields),))


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server, sleeps):
    body = make_zip(DAVIS_MEMBERS)
    server.files["davis.zip"], server.drop["davis.zip"] = body, len(body) // 2
    target = tmp_path / "real" / "davis"
    once = RetryPolicy(attempts=1, timeout_seconds=5, sleep=sleeps.append)
    with pytest.raises(DownloadError, match="davis.zip: download failed after 1 attempt"):
        fetch("davis", target, server, once, davis_zip_source())
    assert_nothing_installed(target)
    partial = tmp_path / "real" / ".downloads" / "davis" / "davis.zip.partial"
    assert partial.read_bytes() == body[: len(body) // 2], "the bytes received so far are kept"
    fetch("davis", target, server, once, davis_zip_source())
    assert server.requests == [("davis.zip", None), ("davis.zip", f"bytes={len(body) // 2}-")]
    assert (target / "JPEGImages/480p/clip/00000.jpg").read_bytes() == b"x" * 5000


def test_transient_failures_are_retried_with_exponential_backoff(tmp_path, server, retry, sleeps):
    server.files["davis.zip"], server.fail["davis.zip"] = make_zip(DAVIS_MEMBERS), 2
    fetch("davis", tmp_path / "davis", server, retry, davis_zip_source())
    assert sleeps == [0.5, 1.0] and len(server.requests) == 3
    assert (tmp_path / "davis" / COMPLETE_MARKER).exists()


def test_a_missing_file_is_not_retried(tmp_path, server, retry, sleeps):
    with pytest.raises(DownloadError, match="HTTP Error 404"):
        fetch("davis", tmp_path / "davis", server, retry, davis_zip_source())
    assert sleeps == [] and len(server.requests) == 1


def test_checksum_mismatch_is_refused_and_the_bad_download_dropped(tmp_path, server, retry):
    body = make_zip(DAVIS_MEMBERS)
    server.files["davis.zip"] = body
    target = tmp_path / "real" / "davis"
    with pytest.raises(ChecksumError, match=r"davis.zip: md5 \w+ does not match the published 0{32}"):
        fetch("davis", target, server, retry, davis_zip_source(md5="0" * 32))
    assert_nothing_installed(target)
    assert not (tmp_path / "real" / ".downloads" / "davis" / "davis.zip").exists()
    fetch("davis", target, server, retry, davis_zip_source(md5=hashlib.md5(body).hexdigest()))
    assert (target / COMPLETE_MARKER).exists()


def test_truncated_archive_is_refused_and_not_pinned(tmp_path, server, retry):
    body = make_tar(DAVIS_MEMBERS, "w:gz")
    server.files["davis.zip"] = body[: len(body) // 2]
    target = tmp_path / "real" / "davis"
    with pytest.raises(DownloadError, match="davis.zip: corrupt or truncated archive"):
        fetch("davis", target, server, retry, davis_zip_source(kind="tgz"))
    assert_nothing_installed(target)
    assert not (tmp_path / "real" / "datasets.lock.json").exists(), "a broken file must never become the pin"


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("members", "special", "message"),
    [
        ({"/etc/evil": b"x"}, (), "member '/etc/evil' has an absolute path"),
        ({"DAVIS/../../evil": b"x"}, (), r"member 'DAVIS/../../evil' escapes the target with '..'"),
        ({}, (link("DAVIS/out", "../../outside"),), r"symlink 'DAVIS/out' -> '../../outside' points outside"),
        ({}, (link("DAVIS/abs", "/etc"),), "symlink 'DAVIS/abs' -> '/etc' points outside"),
        ({}, (link("DAVIS/a", "."), link("DAVIS/a/up", "..")), r"symlink 'DAVIS/a/up' -> '..' points outside"),
        ({"elsewhere": b"x"}, (link("DAVIS/hard", "elsewhere", tarfile.LNKTYPE),), "hardlink 'DAVIS/hard'"),
        ({}, (device("DAVIS/tty"),), "member 'DAVIS/tty' is a device"),
    ],
)
def test_members_escaping_the_target_are_refused(tmp_path, server, retry, members, special, message):
    server.files["davis.zip"] = make_tar({**DAVIS_MEMBERS, **members}, special=special)
    target = tmp_path / "real" / "davis"
    with pytest.raises(UnsafeArchiveError, match=f"davis.zip: {message}"):
        fetch("davis", target, server, retry, davis_zip_source(kind="tar"))
    assert_nothing_installed(target)
    assert sorted(p.name for p in tmp_path.rglob("*") if "outside" in p.name or "evil" in p.name) == []


def test_zip_symlink_pointing_outside_is_refused(tmp_path, server, retry):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("DAVIS/out")
        info.external_attr = 0o120777 << 16  # a symlink, its target as the content
        archive.writestr(info, "../../outside")
    server.files["davis.zip"] = buffer.getvalue()
    with pytest.raises(UnsafeArchiveError, match="symlink 'DAVIS/out' -> '../../outside' points outside"):
        fetch("davis", tmp_path / "real" / "davis", server, retry, davis_zip_source())


# --- The lock file ------------------------------------------------------------------------------


def test_lock_records_first_verifies_later_and_refuses_a_changed_file(tmp_path, server, retry):
    body = make_zip(DAVIS_MEMBERS)
    server.files["davis.zip"] = body
    lock = tmp_path / "config" / "datasets.lock.json"
    fetch("davis", tmp_path / "a" / "davis", server, retry, davis_zip_source(), lock_path=lock)
    recorded = lock.read_bytes()
    assert json.loads(recorded) == {
        "files": {"davis/davis.zip": {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}},
        "version": 1,
    }
    fetch("davis", tmp_path / "b" / "davis", server, retry, davis_zip_source(), lock_path=lock)
    assert lock.read_bytes() == recorded, "a matching download leaves the lock byte-identical"
    server.files["davis.zip"] = make_zip({**DAVIS_MEMBERS, "DAVIS/new.txt": b"changed upstream"})
    with pytest.raises(LockMismatchError, match="davis.zip \\(davis/davis.zip\\) does not match"):
        fetch("davis", tmp_path / "c" / "davis", server, retry, davis_zip_source(), lock_path=lock)
    assert_nothing_installed(tmp_path / "c" / "davis")
    assert lock.read_bytes() == recorded


def test_complete_target_is_left_alone_and_a_foreign_folder_refused(tmp_path, server, retry):
    server.files["davis.zip"] = make_zip(DAVIS_MEMBERS)
    target = tmp_path / "davis"
    fetch("davis", target, server, retry, davis_zip_source())
    fetch("davis", target, server, retry, davis_zip_source())
    assert len(server.requests) == 1
    (tmp_path / "other").mkdir()
    with pytest.raises(DownloadError, match="other exists but is not marked .complete"):
        fetch("davis", tmp_path / "other", server, retry, davis_zip_source())


# --- BLINK through the hub client ---------------------------------------------------------------


def fake_hub(monkeypatch, twin: Path) -> list[dict]:
    """Stands in for the hub client: copies the twin's files that match the allow patterns."""
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        for path in twin.rglob("*.parquet"):
            relative = path.relative_to(twin)
            if any(relative.match(pattern) for pattern in kwargs["allow_patterns"]):
                (Path(kwargs["local_dir"]) / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, Path(kwargs["local_dir"]) / relative)
        return str(kwargs["local_dir"])

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    return calls


def test_blink_is_pinned_to_a_commit_and_loads(tmp_path, monkeypatch, retry):
    hub = SOURCES["blink"].hub
    assert re.fullmatch(r"[0-9a-f]{40}", hub.revision), "a branch name would let the data drift"
    twin = tmp_path / "twin"
    write_synthetic("blink", twin, SMOKE["blink"], seed=5)
    calls = fake_hub(monkeypatch, twin)
    target = tmp_path / "real" / "blink"
    # our twin's parquet files are not the published ones: without the published sha256 they are pinned
    source = dataclasses.replace(SOURCES["blink"], hub=dataclasses.replace(hub, sha256=()))
    fetch_dataset("blink", target, {"blink": source}, lock_path=tmp_path / "lock.json", retry=retry)
    assert [(c["repo_id"], c["revision"], c["repo_type"]) for c in calls] == [
        ("BLINK-Benchmark/BLINK", hub.revision, "dataset")
    ]
    assert loaded("blink", target) == loaded("blink", twin)
    assert all(key.startswith("blink/") and key.endswith(".parquet") for key in read_lock(tmp_path / "lock.json"))


def test_blink_files_are_checked_against_the_hubs_published_sha256(tmp_path, monkeypatch, retry):
    hub = SOURCES["blink"].hub
    assert {path for path, _ in hub.sha256} == {f"{subtask}/val-00000-of-00001.parquet" for subtask in PUBLISHED_SUBTASKS}
    twin = tmp_path / "twin"
    write_synthetic("blink", twin, SMOKE["blink"], seed=5)
    fake_hub(monkeypatch, twin)
    target = tmp_path / "real" / "blink"
    with pytest.raises(ChecksumError, match=r"val-00000-of-00001.parquet: sha256 [0-9a-f]{64} does not match the published"):
        fetch_dataset("blink", target, lock_path=tmp_path / "lock.json", retry=retry)
    assert_nothing_installed(target)
    assert not (tmp_path / "lock.json").exists() or not read_lock(tmp_path / "lock.json")


def test_every_source_url_is_https_unless_the_publisher_serves_none():
    plain = [url for source in SOURCES.values() for archive in source.archives for url in archive.urls if url.startswith("http:")]
    # COCO's own https name serves a certificate for another host: its bucket's https address comes first
    assert all(url.startswith("http://images.cocodataset.org/") for url in plain)
    for source in SOURCES.values():
        assert source.homepage.startswith("https://"), source.name
        for archive in source.archives:
            assert not archive.urls or archive.urls[0].startswith("https://"), archive.name


def test_blink_offline_gives_a_clear_error(tmp_path, monkeypatch, retry):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    target = tmp_path / "real" / "blink"
    with pytest.raises(
        DownloadError, match=r"BLINK-Benchmark/BLINK@[0-9a-f]{40} is not available locally. HF_HUB_OFFLINE"
    ):
        fetch_dataset("blink", target, lock_path=tmp_path / "lock.json", retry=retry)
    assert_nothing_installed(target)


# --- Integrity of what is received --------------------------------------------------------------


def test_a_partial_response_that_ignores_the_range_is_not_appended(tmp_path, server, retry, sleeps):
    body = make_zip(DAVIS_MEMBERS)
    server.files["davis.zip"], server.drop["davis.zip"] = body, len(body) // 2
    target = tmp_path / "real" / "davis"
    once = RetryPolicy(attempts=1, timeout_seconds=5, sleep=sleeps.append)
    with pytest.raises(DownloadError, match="download failed after 1 attempt"):
        fetch("davis", target, server, once, davis_zip_source())
    server.ignore_range.add("davis.zip")
    fetch("davis", target, server, retry, davis_zip_source())
    half = f"bytes={len(body) // 2}-"
    assert server.requests == [("davis.zip", None), ("davis.zip", half), ("davis.zip", None)], "restarted, not appended"
    pinned = read_lock(tmp_path / "real" / "datasets.lock.json")["davis/davis.zip"]
    assert pinned.sha256 == hashlib.sha256(body).hexdigest()
    assert (target / "JPEGImages/480p/clip/00000.jpg").read_bytes() == b"x" * 5000


HTML = b"<!DOCTYPE html>\n<html><body>Please sign in to download this file.</body></html>\n"


def test_an_html_page_for_an_archive_is_refused_dropped_and_fetched_again(tmp_path, server, retry):
    server.files["davis.zip"] = HTML
    target = tmp_path / "real" / "davis"
    with pytest.raises(WrongContentError, match=r"davis.zip: expected davis.zip \(zip\), got an HTML or XML page"):
        fetch("davis", target, server, retry, davis_zip_source())
    assert_nothing_installed(target)
    assert not (tmp_path / "real" / "datasets.lock.json").exists()
    assert list((tmp_path / "real" / ".downloads" / "davis").iterdir()) == [], "the page is not kept in the cache"
    server.files["davis.zip"] = make_zip(DAVIS_MEMBERS)  # the publisher fixed the link
    fetch("davis", target, server, retry, davis_zip_source())
    assert len(server.requests) == 2 and (target / COMPLETE_MARKER).exists()


@pytest.mark.parametrize("kind, body", [("tgz", make_tar(DAVIS_MEMBERS)), ("tar", make_zip(DAVIS_MEMBERS)),
                                        ("zip", b"\x00" * 600)])
def test_an_archive_of_another_kind_is_refused_before_unpacking(tmp_path, server, retry, kind, body):
    server.files["davis.zip"] = body
    with pytest.raises(WrongContentError, match=rf"davis.zip: expected davis.zip \({kind}\), got no {kind} archive"):
        fetch("davis", tmp_path / "real" / "davis", server, retry, davis_zip_source(kind=kind))
    assert not (tmp_path / "real" / "datasets.lock.json").exists()


def test_an_html_page_for_a_single_file_is_neither_installed_nor_pinned(tmp_path, server, retry):
    server.files["categories.txt"] = HTML
    archive = Archive(name="categories.txt", urls=("http://unused.invalid",), kind="file")
    source = DatasetSource(name="cats", archives=(archive,))
    target = tmp_path / "real" / "cats"
    message = r"categories.txt: expected categories.txt \(file\), got an HTML or XML page"
    with pytest.raises(WrongContentError, match=message):
        fetch("cats", target, server, retry, source)
    assert_nothing_installed(target)
    assert not (tmp_path / "real" / "datasets.lock.json").exists()


def test_a_file_failing_its_pin_is_not_reused_from_the_cache(tmp_path, server, retry):
    server.files["davis.zip"] = make_zip(DAVIS_MEMBERS)
    lock = tmp_path / "datasets.lock.json"
    fetch("davis", tmp_path / "a" / "davis", server, retry, davis_zip_source(), lock_path=lock)
    server.files["davis.zip"] = make_zip({**DAVIS_MEMBERS, "DAVIS/new.txt": b"corrupted in transit"})
    for attempt in (1, 2):  # each run downloads again: the refused file is not kept
        with pytest.raises(LockMismatchError):
            fetch("davis", tmp_path / "b" / "davis", server, retry, davis_zip_source(), lock_path=lock,
                  keep_downloads=True)
        assert len(server.requests) == 1 + attempt
        assert list((tmp_path / "b" / ".downloads" / "davis").iterdir()) == []


def test_a_local_write_error_fails_at_once_naming_the_path(tmp_path, server):
    """A file-size limit makes the disk refuse the write, as a full disk would; it is not retried."""
    server.files["davis.zip"] = make_zip(DAVIS_MEMBERS)
    script = (
        "import sys; from pathlib import Path\n"
        "from imagekv.datasets.download import RetryPolicy, fetch_dataset\n"
        "from imagekv.datasets.sources import Archive, DatasetSource\n"
        "root, url = Path(sys.argv[1]), sys.argv[2]\n"
        "source = DatasetSource(name='davis', archives=(Archive(name='davis.zip', urls=(url + '/davis.zip',), "
        "kind='zip', strip='DAVIS/'),))\n"
        "fetch_dataset('davis', root / 'davis', {'davis': source}, root / 'lock.json',\n"
        "              retry=RetryPolicy(sleep=print))\n"
    )

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), server.url], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, preexec_fn=limit_file_size, timeout=120,
    )
    assert result.returncode != 0
    assert re.search(r"LocalWriteError: \S*davis.zip.partial: cannot write the download to the local disk",
                     result.stderr)
    assert len(server.requests) == 1 and result.stdout == "", "no retry, no back-off"
    assert_nothing_installed(tmp_path / "davis")


def test_a_first_download_is_trusted_and_pinned_and_the_log_says_so(tmp_path, server, retry, caplog):
    server.files["davis.zip"] = make_zip(DAVIS_MEMBERS)
    lock = tmp_path / "datasets.lock.json"
    with caplog.at_level(logging.WARNING, logger="imagekv.datasets.download"):
        fetch("davis", tmp_path / "a" / "davis", server, retry, davis_zip_source(), lock_path=lock)
    assert re.search(r"davis/davis.zip has no published checksum .* TRUSTING THIS FIRST DOWNLOAD", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imagekv.datasets.download"):
        fetch("davis", tmp_path / "b" / "davis", server, retry, davis_zip_source(), lock_path=lock)
    assert "TRUSTING" not in caplog.text, "a pinned file is verified, not trusted"


def test_verify_lock_refuses_an_unpinned_download_before_fetching(tmp_path, server, retry):
    server.files["davis.zip"] = make_zip(DAVIS_MEMBERS)
    lock = tmp_path / "datasets.lock.json"
    with pytest.raises(DownloadError, match=r"davis/davis.zip: no published checksum and no pin in .*--verify-lock"):
        fetch("davis", tmp_path / "a" / "davis", server, retry, davis_zip_source(), lock_path=lock, require_pin=True)
    assert server.requests == [] and not lock.exists()
    fetch("davis", tmp_path / "a" / "davis", server, retry, davis_zip_source(), lock_path=lock)
    fetch("davis", tmp_path / "b" / "davis", server, retry, davis_zip_source(), lock_path=lock, require_pin=True)
    assert (tmp_path / "b" / "davis" / COMPLETE_MARKER).exists()


def test_the_download_command_takes_verify_lock(tmp_path):
    """Through the real entry point, with the real catalogue and an empty lock: refused, no request."""
    spec = json.dumps({"dataset": "spair", "user_files": {}})  # SPair-71k has no published checksum
    result = subprocess.run(
        [sys.executable, "-m", "imagekv", "download", "--spec", spec, "--output", "data/real/spair", "--verify-lock"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode != 0
    expected = "spair/SPair-71k.tar.gz: no published checksum and no pin in config/datasets.lock.json"
    assert expected in result.stderr
    assert not (tmp_path / "data" / "real" / "spair").exists()
