"""The GAN phase's pieces: the two network steps, the loop counters and checkpoint selection.

The steps are written out as BasicSR does: the network that only serves as the loss is frozen
and in eval mode while the other one steps. ``Gan`` holds what both steps need, so the stage and
the benchmark run the same code.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pipelines.core.runtime import autocast
from pipelines.core.tasks import FIDELITY
from pipelines.scoring.losses import Adversarial, critic_loss, generator_adv_loss
from pipelines.scoring.metrics import beats
from pipelines.training.ema import ModelEMA
from pipelines.training.loop import set_lr

log = logging.getLogger(__name__)


def requires_grad(model: nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


@dataclass
class Gan:
    """A generator and a critic with their optimizers. ``gen_t`` and ``critic_t`` are what
    steps train through (DistributedDataParallel wrappers under torchrun); the bare networks
    serve when the other one steps, so DDP never waits for gradients of a frozen network.
    With ``ema``, the generator's weight average follows each generator step, and ``kept`` (what
    is validated and saved) is that average."""

    gen: nn.Module
    critic: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    content: nn.Module  # content loss (pixel or feature)
    adversarial: Adversarial = "bce"
    adv_weight: float = 1.0
    content_weight: float = 50.0
    gen_t: nn.Module | None = None
    critic_t: nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None
    ema: ModelEMA | None = None

    @property
    def kept(self) -> nn.Module:
        """The generator that is validated and saved: the weight average, if any."""
        return self.ema.model if self.ema is not None else self.gen

    def state(self) -> dict[str, Any]:
        """Both networks, both optimizers and the average, as the rolling checkpoint holds them."""
        return {
            "generator": self.gen.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.gen.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    @torch.no_grad()
    def fakes(self, lr_img: torch.Tensor) -> torch.Tensor:
        """The generator's outputs as the critic's negatives: eval mode, no gradients."""
        self.gen.eval()
        with autocast(self.device, self.dtype):
            return self.gen(lr_img).float()

    def critic_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        requires_grad(self.critic, True)
        self.critic.train()
        with autocast(self.device, self.dtype):
            loss = critic_loss(self.adversarial, self.critic_t or self.critic, real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss

    def generator_step(
        self,
        lr_img: torch.Tensor,
        real: torch.Tensor,
        lr: float | None = None,
        pixel_weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One generator step, at the learning rate ``lr`` if given; ``pixel_weights`` weigh
        the content loss's pixels (``TrainPairs.text_weight``)."""
        if lr is not None:
            set_lr(self.opt_g, [lr] * len(self.opt_g.param_groups))
        requires_grad(self.critic, False)
        self.critic.eval()
        self.gen.train()
        with autocast(self.device, self.dtype):
            fake = (self.gen_t or self.gen)(lr_img).float()
            adv = generator_adv_loss(self.adversarial, self.critic(fake))
            content = self.content(fake, real, pixel_weights)
            loss = self.adv_weight * adv + self.content_weight * content
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.gen)
        return {"gen_loss": loss, "adv_loss": adv, "content_loss": content}


@dataclass
class Counters:
    """Where the GAN loop stands; saved in the rolling checkpoint as a plain dict.

    The recipe's adaptive switch: the critic trains until its batch loss falls below the
    threshold, or (beyond the recipe, so a critic stuck at chance cannot starve the generator)
    for ``max_critic_steps`` in a row; then one generator step. Each batch feeds one step."""

    generator_steps: int = 0
    batches: int = 0
    critic_steps: int = 0
    critic_turn: bool = True
    critic_run: int = 0

    def after_critic(self, loss: float, threshold: float, max_run: int) -> None:
        self.critic_steps += 1
        self.critic_run += 1
        if loss < threshold or self.critic_run >= max_run:
            self.critic_turn, self.critic_run = False, 0

    def after_generator(self) -> None:
        self.generator_steps += 1
        self.critic_turn = True

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Counters:
        return cls(**state)


def score_key(kind: str, metric: str) -> str:
    """A validation score's name: the crappy set's bare (as before other sets were scored),
    another set's prefixed with its kind (``clean_psnr_y``)."""
    return metric if kind == "crappy" else f"{kind}_{metric}"


def eligible(
    candidate: Mapping[str, float],
    start: Mapping[str, float],
    max_drop: float,
    task: str = "restore",
    kinds: Sequence[str] = ("crappy",),
) -> bool:
    """A candidate may cost at most ``max_drop`` dB of validation PSNR against the start on
    every validation set ``kinds``: the ``task``'s PSNR (Y-PSNR; RGB PSNR for a colorizer,
    whose luma is its input's)."""
    keys = [score_key(kind, FIDELITY[task]) for kind in kinds]
    return all(candidate[k] >= start[k] - max_drop for k in keys)


def better(
    candidate: Mapping[str, float],
    best: Mapping[str, float],
    metric: str,
    kinds: Sequence[str] = ("crappy",),
) -> bool:
    """Whether ``candidate`` beats ``best`` by ``metric`` averaged over the sets ``kinds``."""
    keys = [score_key(kind, metric) for kind in kinds]
    cand, held = (sum(scores[k] for k in keys) / len(keys) for scores in (candidate, best))
    return beats(metric, cand, held)


def blended(model: nn.Module, start: Mapping[str, torch.Tensor], alpha: float) -> nn.Module:
    """A copy of ``model`` whose floating-point weights are ``alpha`` of its own and the rest
    ``start``'s (network interpolation, as ESRGAN trades its GAN generator's texture against
    its PSNR generator's fidelity); integer buffers stay the model's."""
    mixed = copy.deepcopy(model)
    own = mixed.state_dict()
    mixed.load_state_dict(
        {
            k: torch.lerp(start[k].to(v.device, v.dtype), v, alpha) if v.is_floating_point() else v
            for k, v in own.items()
        }
    )
    return mixed


def choose(
    candidate: Mapping[str, float],
    model: nn.Module,
    start: Mapping[str, float],
    best: Mapping[str, float],
    rule: Selection,
    start_weights: Mapping[str, torch.Tensor],
    score: Callable[[nn.Module, int], dict],
) -> tuple[dict, nn.Module] | None:
    """What a new candidate makes the best: the candidate itself when it beats ``best`` and is
    eligible; when it beats ``best`` but costs more than the rule allows, its eligible blend
    with the start of the largest share (``rule.blends``, the candidate's share), if that one
    beats ``best`` too; else None. Shares are tried from the smallest up, and the first one
    over the limit ends the search (a blend's cost grows with its share), so a candidate whose
    smallest blend costs too much is scored once more, and one that beats nothing not at all."""
    if not better(candidate, best, rule.metric, rule.kinds):
        return None
    if eligible(candidate, start, rule.max_drop, rule.task, rule.kinds):
        return dict(candidate), model
    shown = [score_key(k, m) for m in (FIDELITY[rule.task], rule.metric) for k in rule.kinds]
    kept = None
    for alpha in sorted(rule.blends):
        mixed = blended(model, start_weights, alpha)
        scores = {**score(mixed, int(candidate["step"])), "blend": alpha}
        log.info(
            "step %d blended %.2f with the start: %s",
            candidate["step"],
            alpha,
            ", ".join(f"{k} {scores[k]:.4g}" for k in shown),
        )
        if not eligible(scores, start, rule.max_drop, rule.task, rule.kinds):
            break
        kept = scores, mixed
    return kept if kept is not None and better(kept[0], best, rule.metric, rule.kinds) else None


@dataclass(frozen=True)
class Selection:
    """The checkpoint selection rule of a GAN phase (see pipelines/train_gan.py)."""

    metric: str
    max_drop: float
    task: str = "restore"
    kinds: Sequence[str] = ("crappy",)
    blends: Sequence[float] = ()
