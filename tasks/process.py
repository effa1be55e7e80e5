"""Run a command in its own process group, stream its output, and never leave it behind.

A DVC stage is a process tree (``dvc`` -> shell -> python -> data-loader workers). Killing
the direct child alone leaves the training process running and holding the GPU, so the
command starts in a new session and every way out of ``run_streaming`` other than a normal
exit (timeout, cancellation, Ctrl-C, an exception in the caller) terminates the whole group.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

# Short enough that a timeout or an exception raised into this thread (Prefect delivers
# timeouts and cancellation that way) lands promptly while no output arrives.
POLL_SECONDS = 0.2


class CommandTimeout(TimeoutError):
    """The command ran longer than allowed; its process group has been terminated."""


def run_streaming(cmd: Sequence[str], *, cwd: Path | str, env: Mapping[str, str] | None = None,
                  on_line: Callable[[str], None], timeout: float | None = None,
                  grace: float = 10.0) -> int:
    """Run ``cmd``, hand each line of its merged stdout/stderr to ``on_line``, return its exit code.

    ``grace``: seconds between SIGTERM and SIGKILL when the group has to be stopped.
    """
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True, errors="replace", bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()
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
                    raise CommandTimeout(f"{' '.join(cmd)!r} exceeded its timeout of {timeout:g} s")
                continue
            if line is None:
                break
            on_line(line.rstrip("\r\n"))
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
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):  # the stream was closed under us during cleanup
        pass
    finally:
        lines.put(None)


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
