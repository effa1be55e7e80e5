"""Run a command in its own process group, stream its output, and never leave it behind.

A DVC stage is a process tree (``dvc`` -> shell -> python -> data-loader workers). Killing
the direct child alone leaves the training process running and holding the GPU, so the
command starts in a new session and every way out of ``run_streaming`` other than a normal
exit (timeout, cancellation, Ctrl-C, an exception in the caller) terminates the whole group.

Output is split as a terminal shows it: text ended by ``\n`` is a line; text ended by a lone
``\r`` is a progress refresh (tqdm redraws its bar that way) that the next one overwrites,
so it goes to ``on_progress`` and is never taken for a line.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Short enough that a timeout or an exception raised into this thread (Prefect delivers
# timeouts and cancellation that way) lands promptly while no output arrives.
POLL_SECONDS = 0.2


class CommandTimeout(TimeoutError):
    """The command ran longer than allowed; its process group has been terminated."""


def run_streaming(
    cmd: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None],
    timeout: float | None = None,
    grace: float = 10.0,
    on_progress: Callable[[str], None] | None = None,
) -> int:
    """Run ``cmd``, hand each line of its merged stdout/stderr to ``on_line``, return its exit code.

    ``on_progress`` gets each progress refresh (text ended by a lone ``\r``; blank ones, the
    erasing of a bar, are dropped); without it refreshes are dropped.
    ``grace``: seconds between SIGTERM and SIGKILL when the group has to be stopped.
    """
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        bufsize=0,
    )
    lines: queue.Queue[tuple[bool, str] | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    stragglers_stopped = False
    try:
        while True:
            try:
                line = lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if proc.poll() is not None:
                    # The leader is done but something it started still holds the pipe open
                    # (a daemonised worker, say): nothing may outlive the command.
                    if not stragglers_stopped:
                        terminate_group(proc, grace)
                        stragglers_stopped = True
                elif deadline is not None and time.monotonic() > deadline:
                    raise CommandTimeout(
                        f"{' '.join(cmd)!r} exceeded its timeout of {timeout:g} s"
                    ) from None
                continue
            if line is None:
                break
            is_line, text = line
            if is_line:
                on_line(text)
            elif on_progress is not None and text.strip():
                on_progress(text)
        proc.wait()
        # Children that closed their output but still run would otherwise be orphaned.
        terminate_group(proc, grace)
        return proc.returncode
    except BaseException:
        terminate_group(proc, grace)
        raise
    finally:
        reader.join(timeout=1.0)
        if proc.stdout is not None:
            proc.stdout.close()


def _pump(stream, lines: queue.Queue) -> None:
    """Read raw bytes as they come (a bar refresh has no newline) and queue (is_line, text)."""
    splitter = OutputSplitter()
    try:
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            for item in splitter.feed(chunk):
                lines.put(item)
    except (OSError, ValueError):  # the stream was closed under us during cleanup
        pass
    finally:
        for item in splitter.close():
            lines.put(item)
        lines.put(None)


class OutputSplitter:
    """Bytes of a terminal stream -> (True, line) for ``\n``-ended text (``\r\n`` too) and
    (False, text) for text ended by a lone ``\r``, a refresh that overwrites itself."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[bool, str]]:
        self._buf += data
        out = []
        while True:
            cut = min(
                (i for i in (self._buf.find(b"\n"), self._buf.find(b"\r")) if i >= 0), default=-1
            )
            if cut < 0:
                break
            if self._buf[cut : cut + 1] == b"\r":
                if cut + 1 == len(self._buf):
                    break  # a \r\n may be split across reads: wait for the next byte
                if self._buf[cut + 1 : cut + 2] == b"\n":
                    out.append((True, self._text(self._buf[:cut])))
                    self._buf = self._buf[cut + 2 :]
                    continue
                out.append((False, self._text(self._buf[:cut])))
            else:
                out.append((True, self._text(self._buf[:cut])))
            self._buf = self._buf[cut + 1 :]
        return out

    def close(self) -> list[tuple[bool, str]]:
        """What is left when the stream ends: a last line without its newline."""
        rest, self._buf = self._buf, b""
        if rest.endswith(b"\r"):
            return [(False, self._text(rest[:-1]))]
        return [(True, self._text(rest))] if rest else []

    @staticmethod
    def _text(data: bytes) -> str:
        # \r and \n never occur inside a UTF-8 sequence, so a segment is whole characters
        return data.decode("utf-8", errors="replace")


def terminate_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL whatever is left after ``grace`` s."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        proc.poll()  # reap the leader, or its zombie keeps the group alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.poll()
