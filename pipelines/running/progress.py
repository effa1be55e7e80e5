"""Progress bar, step metrics and the loss curve of training loops: one call per step.

The smoothed losses are results, not only display: the last one is a stage's ``train_loss``
and ``curve`` (one row every ``1/CURVE_POINTS`` of the run, whatever MLflow's ``log_every``)
is its plots/<stage>_loss.csv. So this module is a code dep of the training stages.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from tqdm import tqdm

EMA_BETA = 0.98  # the recipe's smoothing of logged losses
CURVE_POINTS = 100  # rows of the loss curve over a whole run


class StepLogger:
    """Shows loss EMAs and images/s in a tqdm bar; sends step metrics to the tracker every
    ``every`` steps (the tracker may be None)."""

    def __init__(
        self,
        stage: str,
        total: int,
        tracker=None,
        every: int = 10,
        start: int = 0,
        quiet: bool = False,
    ):
        self.tracker, self.every, self.total = tracker, every, total
        self.emas: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.curve: list[dict[str, float]] = []
        self._curve_every = max(1, total // CURVE_POINTS)
        self.bar = tqdm(
            total=total,
            initial=start,
            desc=stage,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=1.0,
            disable=quiet,
        )

    def _update_ema(self, name: str, value: float) -> float:
        n = self._counts.get(name, 0) + 1
        self._counts[name] = n
        avg = EMA_BETA * self.emas.get(name, 0.0) + (1 - EMA_BETA) * value
        self.emas[name] = avg
        return avg / (1 - EMA_BETA**n)  # bias-corrected, as fastai's SmoothenValue

    def _smoothed(self, name: str) -> float:
        return self.emas[name] / (1 - EMA_BETA ** self._counts[name])

    def step(self, step: int, values: Mapping[str, float], images_per_s: float) -> None:
        smooth = {k: (self._update_ema(k, v) if "loss" in k else v) for k, v in values.items()}
        if step % self._curve_every == 0 or step == self.total:
            self.curve.append({"step": step, **{k: self._smoothed(k) for k in self.emas}})
        self.bar.update(1)
        self.bar.set_postfix(
            {**{k: f"{v:.4g}" for k, v in smooth.items()}, "img/s": f"{images_per_s:.1f}"},
            refresh=False,
        )
        if self.tracker is not None and step % self.every == 0:
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

    @property
    def ema(self) -> float | None:
        """The smoothed value of the first loss logged."""
        for name in self.emas:
            return self._smoothed(name)
        return None

    def state(self) -> dict:
        """The EMAs and the curve, saved in checkpoints so a resumed run logs and writes what an
        uninterrupted one would."""
        return {
            "emas": dict(self.emas),
            "counts": dict(self._counts),
            "curve": [dict(r) for r in self.curve],
        }

    def load_state(self, state: Mapping | None) -> None:
        if state:
            self.emas, self._counts = dict(state["emas"]), dict(state["counts"])
            self.curve = [dict(r) for r in state.get("curve", [])]

    def close(self) -> None:
        self.bar.close()
