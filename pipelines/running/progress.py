"""Progress bar and step metrics for training loops: one call per step."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from pipelines.core.files import write_csv, write_text

EMA_BETA = 0.98  # the recipe's smoothing of logged losses


class StepLogger:
    """Shows loss EMAs and images/s in a tqdm bar; sends step metrics to the tracker every
    ``every`` steps (the tracker may be None) and keeps the smoothed losses of those steps,
    which ``write_losses`` writes for DVC plots and the report."""

    def __init__(self, stage: str, total: int, tracker=None, every: int = 10, start: int = 0,
                 quiet: bool = False):
        self.tracker, self.every, self.total = tracker, every, total
        self.emas: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.losses: list[dict[str, float]] = []
        self.bar = tqdm(total=total, initial=start, desc=stage, unit="step", dynamic_ncols=True,
                        file=sys.stderr, mininterval=1.0, disable=quiet)

    def _update_ema(self, name: str, value: float) -> float:
        n = self._counts.get(name, 0) + 1
        self._counts[name] = n
        avg = EMA_BETA * self.emas.get(name, 0.0) + (1 - EMA_BETA) * value
        self.emas[name] = avg
        return avg / (1 - EMA_BETA ** n)  # bias-corrected, as fastai's SmoothenValue

    def step(self, step: int, values: Mapping[str, float], images_per_s: float) -> None:
        smooth = {k: (self._update_ema(k, v) if "loss" in k else v) for k, v in values.items()}
        self.bar.update(1)
        self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in smooth.items()}, "img/s": f"{images_per_s:.1f}"},
                             refresh=False)
        if step % self.every == 0 or step == self.total:  # the last step: a short run has one
            self.losses.append({"step": step, **{k: self._smoothed(k) for k in self.emas
                                                 if "loss" in k}})
            if self.tracker is not None:
                self.tracker.log_metrics({**smooth, "images_per_s": images_per_s}, step=step)

    def emas_only(self, values: Mapping[str, float]) -> None:
        """Smooth losses of steps that do not advance the bar (the GAN's critic steps)."""
        for k, v in values.items():
            self._update_ema(k, v)

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        if not self.bar.disable:
            self.bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        if self.tracker is not None:
            self.tracker.log_metrics(values, step=step)

    def _smoothed(self, name: str) -> float:
        return self.emas[name] / (1 - EMA_BETA ** self._counts[name])

    def write_losses(self, path: Path | str) -> None:
        """The smoothed losses every ``every`` steps as CSV (a loss not seen yet: nan)."""
        names = list(dict.fromkeys(k for row in self.losses for k in row))
        if not names:
            write_text(path, "step\n")  # DVC expects the output of every run
            return
        write_csv(path, [{k: row.get(k, math.nan) for k in names} for row in self.losses])

    @property
    def ema(self) -> float | None:
        """The smoothed value of the first loss logged."""
        for name in self.emas:
            n = self._counts[name]
            return self.emas[name] / (1 - EMA_BETA ** n)
        return None

    def state(self) -> dict:
        """The EMAs, saved in checkpoints so a resumed run logs what an uninterrupted one would."""
        return {"emas": dict(self.emas), "counts": dict(self._counts),
                "losses": [dict(row) for row in self.losses]}

    def load_state(self, state: Mapping | None) -> None:
        if state:
            self.emas, self._counts = dict(state["emas"]), dict(state["counts"])
            self.losses = [dict(row) for row in state.get("losses", [])]

    def close(self) -> None:
        self.bar.close()
