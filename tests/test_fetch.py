"""Resumable, checksummed downloads from a local HTTP server, and safe archive extraction."""

from __future__ import annotations

import hashlib
import re
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.datasets.fetch import (
    ChecksumError,
    DownloadError,
    FetchError,
    UnsafeArchiveError,
    archive_name,
    download,
    fetch_archive,
    safe_extract,
)

from archives import tar_bytes

PAYLOAD = bytes(range(256)) * 400  # 100 KiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless told not to; can break off once."""

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and srv.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.break_off_after is not None:
            body, srv.break_off_after = body[: srv.break_off_after], None
        self.wfile.write(body)
        srv.bytes_sent += len(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests, srv.bytes_sent = {}, [], 0
    srv.honour_range, srv.break_off_after = True, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- download -------------------------------------------------------------------------------------


def test_download_verifies_and_then_reuses_without_network(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "dl" / "data.bin"
    assert download(server.url + "/data.bin", dest, PAYLOAD_SHA, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and not dest.with_name("data.bin.part").exists()
    assert len(server.requests) == 1

    download(server.url + "/data.bin", dest, PAYLOAD_SHA.upper(), progress=False)
    assert len(server.requests) == 1

    dest.write_bytes(b"stale")  # a file that does not match is fetched again
    download(server.url + "/data.bin", dest, PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 2


def test_wrong_checksum_deletes_the_download_and_says_so(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    url, wrong = server.url + "/data.bin", "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(url, tmp_path / "data.bin", wrong, progress=False)
    message = str(err.value)
    assert url in message and wrong in message and PAYLOAD_SHA in message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_and_http_errors(server, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/data.bin"
    with pytest.raises(DownloadError, match=r"cannot connect"):
        download(url, tmp_path / "a.bin", PAYLOAD_SHA, progress=False, timeout=5)
    with pytest.raises(DownloadError, match=r"/missing.bin: HTTP 404"):
        download(server.url + "/missing.bin", tmp_path / "b.bin", PAYLOAD_SHA, progress=False)
    with pytest.raises(DownloadError, match="only http"):
        download("ftp://example.org/x", tmp_path / "c.bin", PAYLOAD_SHA, progress=False)
    with pytest.raises(ValueError, match="64 hex"):
        download(server.url + "/x", tmp_path / "d.bin", "abc", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.break_off_after = 40_000
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        download(server.url + "/data.bin", dest, PAYLOAD_SHA, progress=False, attempts=1)
    part = tmp_path / "data.bin.part"
    assert part.read_bytes() == PAYLOAD[:40_000] and not dest.exists()

    download(server.url + "/data.bin", dest, PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/data.bin", "bytes=40000-")
    assert server.bytes_sent == len(PAYLOAD)  # nothing was sent twice


def test_break_off_is_retried_within_one_call(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.break_off_after = 10_000
    download(server.url + "/data.bin", tmp_path / "data.bin", PAYLOAD_SHA, progress=False)
    assert [r[1] for r in server.requests] == [None, "bytes=10000-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:30_000])
    download(server.url + "/data.bin", tmp_path / "data.bin", PAYLOAD_SHA, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=30000-")]


def test_part_from_another_file_is_discarded_after_the_mismatch(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    (tmp_path / "data.bin.part").write_bytes(b"x" * 5_000)  # left by an older version
    download(server.url + "/data.bin", tmp_path / "data.bin", PAYLOAD_SHA, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert [r[1] for r in server.requests] == ["bytes=5000-", None]


def test_complete_part_is_verified_without_refetching(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)  # stopped between transfer and check
    download(server.url + "/data.bin", tmp_path / "data.bin", PAYLOAD_SHA, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD and server.bytes_sent == 0


# -- extraction -----------------------------------------------------------------------------------

FILES = {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(50)), "c.txt": b"gamma"}


def make_tar(path: Path, mode: str, files=FILES, extra=()) -> Path:
    path.write_bytes(tar_bytes(files, mode, extra))
    return path


def make_zip(path: Path, files=FILES, links=()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "name, mode",
    [
        ("a.tar", "w"),
        ("a.tar.gz", "w:gz"),
        ("a.tgz", "w:gz"),
        ("a.tar.bz2", "w:bz2"),
        ("a.tar.xz", "w:xz"),
    ],
)
def test_extract_tar_formats(tmp_path, name, mode):
    archive = make_tar(tmp_path / name, mode)
    assert safe_extract(archive, tmp_path / "out") == tmp_path / "out"
    assert tree(tmp_path / "out") == FILES


def test_extract_zip(tmp_path):
    safe_extract(make_zip(tmp_path / "a.zip"), tmp_path / "out")
    assert tree(tmp_path / "out") == FILES


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member, why",
    [
        (tar_member("/etc/evil"), "absolute path"),
        (tar_member("top/../../evil"), "path traversal"),
        (tar_member("../evil"), "path traversal"),
        (tar_member("top/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (tar_member("top/hard", tarfile.LNKTYPE, "top/a.txt"), "link"),
        (tar_member("top/fifo", tarfile.FIFOTYPE), "special file"),
        (tar_member("top/dev", tarfile.CHRTYPE), "special file"),
    ],
)
def test_malicious_tar_members_are_refused_by_name(tmp_path, member, why):
    archive = make_tar(tmp_path / "evil.tar.gz", "w:gz", extra=[member])
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(member.name)) + ".*" + why):
        safe_extract(archive, out)
    assert tree(out) == {"previous.txt": b"kept"}  # nothing half-extracted is visible
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "out"]
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    "files, links, why",
    [
        ({"../evil.txt": b"x"}, (), "path traversal"),
        ({"/abs/evil.txt": b"x"}, (), "absolute path"),
        ({}, [("top/link", "/etc/passwd")], "symbolic link"),
    ],
)
def test_malicious_zip_members_are_refused(tmp_path, files, links, why):
    archive = make_zip(tmp_path / "evil.zip", {**FILES, **files}, links)
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"plain text, not an archive")
    with pytest.raises(FetchError, match="not a tar or zip"):
        safe_extract(tmp_path / "x.tar.gz", tmp_path / "out")


def test_fetch_archive_downloads_once_and_reuses_the_extracted_folder(server, tmp_path):
    data = make_tar(tmp_path / "src.tar.gz", "w:gz").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    server.files["/files/my%20images.tar.gz"] = data
    url = server.url + "/files/my%20images.tar.gz"
    folder = fetch_archive(url, sha, tmp_path / "downloads", progress=False)
    assert folder == tmp_path / "downloads" / sha[:16] / "extracted"
    assert tree(folder) == FILES
    assert (tmp_path / "downloads" / sha[:16] / "my_images.tar.gz").read_bytes() == data
    assert fetch_archive(url, sha, tmp_path / "downloads", progress=False) == folder
    assert len(server.requests) == 1


def test_archive_name():
    assert archive_name("https://x.org/a/b/images.tar.gz?raw=1") == "images.tar.gz"
    assert archive_name("https://x.org/") == "archive"
    assert archive_name("https://x.org/..%2F..%2Fetc") == "etc"
