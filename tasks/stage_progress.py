"""A stage's progress bars as a Prefect progress artifact, instead of one log line per refresh.

A stage draws tqdm bars on its stderr; each refresh reaches the task as text ended by a lone
``\\r`` (see tasks/process.py). ``StageProgress`` reads the bar's ``n/total`` from it and moves
one progress artifact of the task run, at most once per whole percent, with the bar's text
(losses, images/s) as its description.
"""

from __future__ import annotations

import re
from uuid import UUID

# tqdm's default bar: "<desc>:  42%|████      | 294/700 [00:11<00:15, 26.1step/s, loss=0.05]"
BAR = re.compile(
    r"(?P<desc>[^|]*?):?\s*(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"(?P<rest>.*)$"
)


def artifact_key(stage: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{stage}-progress".lower()).strip("-")


def parse_bar(text: str) -> tuple[str, int, int, str] | None:
    """(description, n, total, the rest) of a tqdm refresh; None for anything else."""
    found = BAR.search(text.strip())
    if not found or int(found["total"]) <= 0:
        return None
    return found["desc"].strip(), int(found["n"]), int(found["total"]), found["rest"].strip()


class StageProgress:
    """``on_progress`` for ``run_streaming``; the artifact is created at the first bar."""

    def __init__(self, stage: str, logger):
        self.stage, self.logger = stage, logger
        self.artifact_id: UUID | None = None
        self.percent: float | None = None
        self.updates = 0
        self._broken = False

    def __call__(self, text: str) -> None:
        bar = parse_bar(text)
        if bar is None or self._broken:
            return
        desc, n, total, rest = bar
        percent = float(min(100, 100 * n // total))
        if percent == self.percent:
            return
        self.percent = percent
        description = (
            f"{self.stage}: {desc + ' ' if desc and desc != self.stage else ''}"
            f"{n}/{total} {rest}".strip()
        )
        self._send(percent, description)

    def finish(self) -> None:
        """The stage succeeded: a bar left short of the end (a resumed run) shows done."""
        if self.artifact_id is not None and self.percent != 100.0:
            self.percent = 100.0
            self._send(100.0, f"{self.stage}: done")

    def _send(self, percent: float, description: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    percent, key=artifact_key(self.stage), description=description
                )
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
            self.updates += 1
        except Exception as exc:  # progress is for looking at: it never stops a stage
            self._broken = True
            self.logger.warning(
                "progress artifact of %s not updated (%s: %s)", self.stage, type(exc).__name__, exc
            )
