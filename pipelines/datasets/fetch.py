"""Fetching data archives: resumable, checksummed downloads and safe extraction.

A download streams into ``<dest>.part``; an interrupted transfer leaves the part behind and
the next attempt asks the server for the rest (HTTP Range). Only a file whose sha256 matches
is renamed to ``dest``, so a present ``dest`` is always a verified one.

Extraction refuses members that could write outside the target (absolute paths, ``..``,
links) or create special files, and works in a temporary sibling folder that replaces the
target only when complete.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from pipelines.core.errors import StageError
from pipelines.core.files import atomic_dir, sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 16
TIMEOUT_S = 30.0
ATTEMPTS = 3
USER_AGENT = "decrappify/0.1 (+python urllib)"
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class FetchError(StageError):
    """Fetching or unpacking data failed; the message says what and where."""


class DownloadError(FetchError):
    """The server could not be reached, answered with an error, or the transfer broke off."""


class ChecksumError(FetchError):
    """The downloaded bytes are not the expected ones."""


class UnsafeArchiveError(FetchError):
    """An archive member would escape the target folder or is not a plain file or folder."""


class _Interrupted(DownloadError):
    """The connection broke off mid-transfer; what arrived is kept for a resume."""


def download(
    url: str,
    dest: Path | str,
    sha256: str,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
    attempts: int = ATTEMPTS,
) -> Path:
    """Fetch ``url`` into ``dest`` and verify its sha256; return ``dest``.

    A ``dest`` already holding the expected bytes is reused without touching the network.
    A broken-off transfer is retried up to ``attempts`` times in all, each time resuming from
    the bytes already received; when every attempt fails the part file stays for the next
    run. ``timeout`` (seconds) bounds the connection and every wait for data.
    """
    dest = Path(dest)
    expected = sha256.lower()
    if not SHA256_RE.match(expected):
        raise ValueError(f"sha256 {sha256!r} is not 64 hex digits")
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"{url}: only http:// and https:// URLs can be downloaded")
    if dest.is_file():
        if sha256_file(dest) == expected:
            log.info("%s: already downloaded and verified", dest)
            return dest
        log.warning("%s: present but its sha256 differs; downloading again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    while True:
        resumed = False
        for attempt in range(1, attempts + 1):
            try:
                resumed |= _transfer(url, part, progress, timeout)
                break
            except _Interrupted as exc:
                if attempt == attempts:
                    raise DownloadError(
                        f"{exc}; {attempts} attempt(s) failed, run again to resume from {part}"
                    ) from None
                log.warning("%s (attempt %d of %d); resuming", exc, attempt, attempts)
        actual = sha256_file(part)
        if actual == expected:
            break
        part.unlink()
        if not resumed:
            raise ChecksumError(
                f"{url}: sha256 mismatch: expected {expected}, got {actual}; "
                "the download was deleted"
            )
        # The kept bytes may belong to an older version of the file: start clean once.
        log.warning("%s: resumed download does not match its sha256; starting over", url)
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> bool:
    """Append the rest of ``url`` to ``part``, asking for a byte range when part is not empty.

    Returns whether bytes already in ``part`` were kept (the transfer resumed).
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # The part already holds every byte (an earlier run stopped before verifying).
            return True
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"{url}: cannot connect: {reason}") from None

    with response:
        resumed = bool(offset) and response.status == 206 and _range_start(response) == offset
        if response.status == 206 and not resumed:
            part.unlink(missing_ok=True)
            raise _Interrupted(f"{url}: server sent a byte range that was not asked for")
        if offset and not resumed:
            log.info("%s: server ignored the byte range; starting over", url)
            offset = 0
        elif resumed:
            log.info("%s: resuming at byte %d", url, offset)
        length = response.headers.get("Content-Length", "")
        remaining = int(length) if length.isdigit() else None
        total = offset + remaining if remaining is not None else None
        received = 0
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[: -len(".part")],
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Interrupted(
                        f"{url}: transfer broke off after {offset + received} "
                        f"bytes ({type(exc).__name__})"
                    ) from None
                if not block:
                    break
                f.write(block)
                received += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    # urllib returns a short body silently when the server closes early.
    if remaining is not None and received < remaining:
        raise _Interrupted(f"{url}: transfer broke off after {offset + received} of {total} bytes")
    return resumed


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def archive_name(url: str) -> str:
    """The file name an archive URL points at (``images.tar.gz``), safe to use locally."""
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "archive"


def fetch_archive(url: str, sha256: str, downloads: Path | str, progress: bool = True) -> Path:
    """Download and unpack an archive once; return the folder holding its contents.

    Files live under ``downloads/<sha256 prefix>/`` so two archives with the same file name
    never overwrite each other, and an unpacked folder, written atomically, is reused.
    """
    root = Path(downloads) / sha256.lower()[:16]
    extracted = root / "extracted"
    if extracted.is_dir():
        log.info("%s: reusing %s", url, extracted)
        return extracted
    archive = download(url, root / archive_name(url), sha256, progress=progress)
    safe_extract(archive, extracted)
    return extracted


def safe_extract(archive: Path | str, dest_dir: Path | str) -> Path:
    """Unpack a tar (plain, gz, bz2, xz) or zip archive into ``dest_dir``; return it.

    Every member is checked before it is written; an unsafe one aborts the whole
    extraction with ``UnsafeArchiveError`` naming it, and ``dest_dir`` stays as it was.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    for stale in dest_dir.parent.glob(f".{dest_dir.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if zipfile.is_zipfile(archive):
        extract = _extract_zip
    elif tarfile.is_tarfile(archive):
        extract = _extract_tar
    else:
        raise FetchError(f"{archive}: not a tar or zip archive")
    with atomic_dir(dest_dir) as tmp:
        extract(archive, tmp)
    return dest_dir


def _check_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: absolute path")
    if ".." in path.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: path traversal (..)")


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            # One streaming pass: a compressed tar is read once, member by member.
            for member in tar:
                _check_name(archive, member.name)
                if member.issym() or member.islnk():
                    raise UnsafeArchiveError(
                        f"{archive}: refusing member {member.name!r}: link to {member.linkname!r}"
                    )
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(
                        f"{archive}: refusing member {member.name!r}: "
                        "device, fifo or other special file"
                    )
                # The "data" filter repeats these checks and drops odd permission bits.
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{archive}: cannot extract: {exc}") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_name(archive, info.filename)
                # Unix file type bits; zips made elsewhere leave them 0 (a plain entry).
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind == stat.S_IFLNK:
                    raise UnsafeArchiveError(
                        f"{archive}: refusing member {info.filename!r}: symbolic link"
                    )
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise UnsafeArchiveError(
                        f"{archive}: refusing member {info.filename!r}: "
                        "device, fifo or other special file"
                    )
            for info in members:
                target = dest / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except UnsafeArchiveError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:  # RuntimeError: encrypted
        raise FetchError(f"{archive}: cannot extract: {exc}") from None
