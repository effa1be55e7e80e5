"""Archives built in memory for download and extraction tests."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping


def tar_bytes(
    files: Mapping[str, bytes], mode: str = "w:gz", extra: Iterable[tarfile.TarInfo] = ()
) -> bytes:
    """A tar archive of ``files`` (name -> content), then the ``extra`` members as given
    (links, devices, hostile names); a regular extra member holds b"evil"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"evil" if info.isfile() else b""))
    return buf.getvalue()
