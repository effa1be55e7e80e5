"""Headless Chromium driven over the DevTools protocol, for tests that look at a page as a
person would: console errors, network requests, the DOM, real mouse input, screenshots.

Chromium comes from Debian's packages (`apt-get install chromium`); ``ensure_chromium``
installs it where it is missing and the tests run as root, and says why when it cannot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--mute-audio",
]


def ensure_chromium() -> str | None:
    """None when Chromium is there (installed now if need be), else why it is not."""
    if CHROMIUM.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} missing and apt-get cannot install it here (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if proc.returncode:
            return f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
    return (
        None if CHROMIUM.exists() else "apt-get installed chromium but /usr/bin/chromium is missing"
    )


class Page:
    """One tab: ``send`` a DevTools command, events collected in ``events``."""

    def __init__(self, ws):
        self.ws, self.events, self._ids = ws, [], itertools.count(1)

    def send(self, method: str, timeout: float = 60, **params) -> dict:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        for message in self.events:
            if message.get("method") == event:
                return message
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            message = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            self.events.append(message)
            if message.get("method") == event:
                return message
        raise TimeoutError(f"no {event} within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def drain(self, seconds: float = 0.3) -> None:
        """Collect the events that arrive within ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=end - time.monotonic())))
            except TimeoutError:
                break

    def mouse(self, kind: str, x: float, y: float, buttons: int = 1) -> None:
        self.send(
            "Input.dispatchMouseEvent",
            type=kind,
            x=x,
            y=y,
            button="left",
            buttons=buttons,
            clickCount=1,
        )

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        data = self.send("Page.captureScreenshot", timeout=120, **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    # what the page did, from the collected events
    def console_errors(self) -> list[str]:
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A fresh headless Chromium (own profile folder) and its first tab, closed afterwards."""
    from websockets.sync.client import connect

    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        port = None
        end = time.monotonic() + 60
        while port is None and time.monotonic() < end:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}")
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
        if port is None:
            raise TimeoutError("chromium did not open its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            targets = json.loads(r.read())
        [tab] = [t for t in targets if t["type"] == "page"]
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            page = Page(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.send(f"{domain}.enable")
            page.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page
    finally:
        from tasks.process import terminate_group

        terminate_group(proc, grace=10)  # the browser and its renderer processes
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)


def open_file(page: Page, path: Path, timeout: float = 60) -> None:
    """Load ``path`` from disk and wait for its load event."""
    page.events.clear()
    page.send("Page.navigate", url=path.resolve().as_uri())
    page.wait_for("Page.loadEventFired", timeout=timeout)
    page.drain()
