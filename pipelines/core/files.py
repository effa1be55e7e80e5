"""Atomic file and directory writes, checksums and JSON outputs.

A reader (the next stage, DVC, a person) never sees a half-written output: everything is
written to a temporary sibling and renamed into place, which is atomic on one filesystem.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
# mkstemp creates 0600 files; outputs get the usual mode of new files instead
_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(OSError):
    """An output could not be written (disk full, read-only, a file where a folder should be).

    Raised by the atomic writes below, so the previous output is still in place; an
    ``OSError`` with ``errno``, ``strerror`` and ``filename`` (the output, not its temporary).
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}; {self.filename} was left as it was"


def _write_error(path: Path, exc: OSError) -> WriteError:
    return WriteError(exc.errno, exc.strerror or str(exc), str(path))


def _make_parent(path: Path) -> None:
    """Create the folder ``path`` goes in; a file in the way is named in the error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(
            (p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()),
            path.parent,
        )
        raise WriteError(errno.ENOTDIR, f"{blocker} is a file, not a folder", str(path)) from None
    except OSError as exc:
        raise _write_error(path, exc) from exc


# errors that can only mean the disk refused a write, whatever the code was doing
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except WriteError:
        raise
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def csv_text(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    float_format: str | None = None,
) -> str:
    """Rows as CSV text, one header line; ``columns`` default to the first row's keys, and
    ``float_format`` (e.g. ".6g") formats float values."""
    rows = list(rows)
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: format(v, float_format) if float_format and isinstance(v, float) else v
                for k, v in row.items()
            }
        )
    return buf.getvalue()


def write_csv(
    path: Path | str,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    float_format: str | None = ".6g",
) -> None:
    """``csv_text`` written atomically (floats to 6 significant digits by default, for DVC plots)."""
    write_text(path, csv_text(rows, columns, float_format))


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it replaces ``path``.

    The previous ``path`` stays in place until the new one is complete. What an earlier,
    killed call left beside ``path`` (its temporary folder, the previous version) is removed
    first: only one writer of ``path`` runs at a time, so nothing else can own them.
    """
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    _make_parent(path)
    try:
        if old.is_dir() and not path.exists():
            os.replace(old, path)  # killed between the two renames below: put it back
        for stale in [*path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), old]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        replaced = path.exists()
        if replaced:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if replaced:
                os.replace(old, path)
            raise
        if replaced:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        # a write inside the folder that the disk refused is a failure to write ``path``
        if isinstance(exc, WriteError) or exc.errno in _DISK_ERRNOS:
            raise _write_error(path, exc) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: Path | str) -> int:
    """Delete the ``.*.tmp`` leftovers of an interrupted atomic write below ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.rglob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed += 1
    return removed
