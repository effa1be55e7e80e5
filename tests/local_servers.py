"""Servers on loopback for tests: a static file server, and long-running commands (Prefect,
MLflow) started in their own process group and waited for until they answer."""

from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def static_files(root: Path) -> Iterator[str]:
    """Serve the folder ``root`` over HTTP on loopback; yields its base URL."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def service(
    cmd: Sequence[str],
    home: Path,
    health_url: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in ``home`` (output to ``home``/server.log) until ``health_url`` answers;
    stop its whole process group on the way out."""
    from tasks.process import terminate_group

    log_path = home / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=home,
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while not http_ok(health_url):
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"{cmd[:4]} did not answer in {timeout:g} s"
                time.sleep(0.5)
            yield proc
        finally:
            terminate_group(proc, grace=10)
