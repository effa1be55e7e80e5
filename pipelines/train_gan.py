"""Stage: a short GAN phase from both pretrained networks, picking its own best checkpoint.

The loop is the recipe's (fastai GANTrainer + AdaptiveGANSwitcher) written out plainly:
it starts with the critic and trains it until its batch loss falls below ``threshold``, then
makes one generator step (adversarial + ``content_weight`` x content loss), and so on. Each
batch feeds exactly one step. The network that only serves as the loss is frozen and in eval
mode. Beyond the recipe, a run of critic steps is capped at ``max_critic_steps``, because a
critic stuck at chance would otherwise starve the generator; and the generator's lr rises
linearly over its first ``warmup`` steps, because at the full lr (Adam, beta1 0) its first
steps move furthest from the pretrained generator, the candidate the others are held to.
With ``ema``, the candidates are an average of the generator's weights over its recent steps
(at that decay from the pretrained weights on), as every current super-resolution GAN trainer
keeps one: the adversarial steps' noise averages out of what is scored and saved.

Checkpoint selection (instead of picking "just before the glitches" by eye): every
``checkpoint_every`` generator steps the generator is scored on the validation split. The
starting (pretrained) generator is candidate 0. The validation photos are scored under each of
``valid_degradations``: crappy (the crappify stage's LR) and clean (MATLAB-bicubic downscaled),
because a GAN phase trained on crappy inputs can cost clean ones far more than crappy ones. A
candidate is eligible when its validation Y-PSNR is at most ``max_psnr_drop`` dB below
candidate 0's on every one of them; among the eligible ones the stage keeps the best by
``select_metric`` (a perceptual score; HaarPSI by default) averaged over them, the earliest on
ties. So the GAN phase can trade a bounded amount of fidelity for perceptual quality, and
never returns a generator that collapsed. With ``blends``, a candidate that beats the best but
costs more than ``max_psnr_drop`` is mixed with the pretrained weights at those shares of its
own (network interpolation), and the blend of the largest share within the limit competes in
its place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipelines.core.config import BaseConfig, ConfigError, as_dict, bounded, section
from pipelines.core.files import sha256_file, write_csv
from pipelines.core.fingerprint import fingerprint
from pipelines.core.results import write_results
from pipelines.core.runtime import to_device
from pipelines.core.tasks import REGISTERED_MODEL, require_task
from pipelines.datasets.degraded import train_dataset
from pipelines.datasets.pairs import (
    NO_ZOOM,
    EvalPairs,
    check_kinds,
    check_text_window,
    check_zoom,
    step_loader,
)
from pipelines.imaging.degradations import CrappifyConfig
from pipelines.networks import build_critic, build_generator
from pipelines.running.progress import StepLogger
from pipelines.running.registry import DIGEST_TAG
from pipelines.running.stage import stage_main
from pipelines.scoring.losses import Adversarial, Content, build_content_loss, check_text_weight
from pipelines.scoring.metrics import COLOUR_METRICS, SELECTABLE, stlpips_available
from pipelines.training import checkpoint, distributed, prelude
from pipelines.training.ema import ModelEMA
from pipelines.training.gan import Counters, Gan, Selection, choose, score_key
from pipelines.training.loop import RollingCheckpoint, Throughput, adamw, check_finite
from pipelines.training.schedule import warm_up
from pipelines.training.validation import sample_grid, validate

log = logging.getLogger(__name__)
STAGE = "train_gan"


@dataclass(frozen=True)
class TrainGanConfig:
    base: BaseConfig
    crappify: CrappifyConfig = section("crappify")
    steps: int = bounded(100, lo=1)  # generator steps
    batch_size: int = bounded(8, lo=1)
    crop: int = bounded(0, lo=0)  # 0 = base.crop
    data: Literal["fresh", "fixed"] = "fresh"
    lr: float = bounded(1e-4, lo=0, lo_open=True)
    warmup: int = bounded(0, lo=0)  # generator steps of linear lr warm-up
    ema: float = bounded(0.0, lo=0, hi=0.99999)  # decay of the generator's weight average; 0 = none
    critic_lr_mult: float = bounded(5.0, lo=0, lo_open=True)
    betas: tuple[float, float] = bounded((0.0, 0.99), lo=0, hi=1)
    weight_decay: float = bounded(1e-3, lo=0)
    adversarial: Adversarial = "bce"
    adv_weight: float = bounded(1.0, lo=0)
    content: Content = "l1"
    content_weight: float = bounded(50.0, lo=0)
    threshold: float = 0.65  # critic trains until its loss is below this
    max_critic_steps: int = bounded(5, lo=1)
    checkpoint_every: int = bounded(20, lo=1)
    max_psnr_drop: float = bounded(0.5, lo=0)
    select_metric: SELECTABLE = "haarpsi"
    blends: tuple[float, ...] = ()  # a too costly candidate's shares to blend with the start
    valid_crop: int = bounded(256, lo=0)
    valid_degradations: tuple[str, ...] = ("crappy",)  # evaluate's kinds: crappy | clean
    lighting: float = bounded(0.1, lo=0, hi=1)
    clean_prob: float = bounded(0.0, lo=0, hi=1)
    clean_resample: tuple[str, ...] = ("area",)  # as pretrain_generator's
    watermark_window: int = bounded(0, lo=0)  # as pretrain_generator's
    watermark_focus: float = bounded(0.0, lo=0, hi=1)  # as pretrain_generator's
    zoom: tuple[float, float] = NO_ZOOM  # as pretrain_generator's
    text_weight: float = bounded(0.0, lo=0)  # as pretrain_generator's, on the content loss
    workers: int = bounded(0, lo=0)
    log_every: int = bounded(10, lo=1)

    def lr_at(self, step: int) -> float:
        """The generator's lr at generator step ``step`` (0 is the first): the warm-up's."""
        return warm_up(step, self.warmup, self.lr)

    def selection(self) -> Selection:
        return Selection(
            self.select_metric,
            self.max_psnr_drop,
            self.base.task,
            self.valid_degradations,
            self.blends,
        )

    def check(self) -> None:
        check_text_window(self.watermark_window, self.watermark_focus)
        check_zoom(self.zoom, self.data)
        check_text_weight(self.text_weight, self.content, self.data)
        for key in ("crop", "valid_crop"):
            self.base.check_crop(key, getattr(self, key))
        check_kinds("valid_degradations", self.valid_degradations)
        for alpha in self.blends:
            if not 0 < alpha < 1:
                raise ConfigError(f"blends: {alpha} is not a share between 0 and 1 (exclusive)")
        if self.select_metric == "stlpips" and not stlpips_available():
            raise ConfigError("select_metric: 'stlpips' needs the stlpips-pytorch weights")
        if self.select_metric in COLOUR_METRICS and self.base.task != "colorize":
            raise ConfigError(
                f"select_metric: {self.select_metric!r} is a colorizer's metric; base.task is "
                f"{self.base.task}"
            )


def build(cfg: TrainGanConfig, session: prelude.Session) -> tuple[Gan, dict]:
    """Both pretrained networks with fresh optimizers; also the generator's model file."""
    models = Path(cfg.base.paths.models)
    g_saved = checkpoint.load(models / "generator.pt", kind="generator")
    require_task(g_saved["arch"], models / "generator.pt", cfg.base.task)
    d_saved = checkpoint.load(models / "critic.pt", kind="critic")
    gen = to_device(build_generator(**g_saved["arch"]), session.device)
    critic = to_device(build_critic(**d_saved["arch"]), session.device)
    gen.load_state_dict(g_saved["model"])
    critic.load_state_dict(d_saved["model"])
    opt_g = adamw(gen.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = adamw(
        critic.parameters(),
        lr=cfg.lr * cfg.critic_lr_mult,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
    )
    ranks, base = session.ranks, cfg.base
    gan = Gan(
        gen,
        critic,
        opt_g,
        opt_d,
        build_content_loss(cfg.content, luminance=gen.chroma == "input").to(session.device),
        cfg.adversarial,
        cfg.adv_weight,
        cfg.content_weight,
        gen_t=distributed.wrap(gen, ranks, session.device, base.sync_batchnorm),
        critic_t=distributed.wrap(critic, ranks, session.device, base.sync_batchnorm),
        device=session.device,
        dtype=session.dtype,
        ema=ModelEMA(gen, cfg.ema, warmup=False) if cfg.ema else None,
    )
    return gan, g_saved


def rolling_checkpoint(cfg: TrainGanConfig, writer: bool) -> RollingCheckpoint:
    """The resumable state, valid for these params, both pretrained networks and this code."""
    models = Path(cfg.base.paths.models)
    inputs = [models / "generator.pt", models / "critic.pt"]
    return RollingCheckpoint(
        Path(cfg.base.paths.checkpoints) / STAGE,
        fingerprint(as_dict(cfg), inputs, stage=STAGE),
        writer=writer,
    )


def batches(cfg: TrainGanConfig, start: int, session: prelude.Session):
    """The training batches from batch ``start`` on: enough for the worst case of
    ``max_critic_steps`` critic steps per generator step."""
    base = cfg.base
    dataset = train_dataset(
        base,
        cfg.data,
        cfg.crappify,
        cfg.crop or base.crop,
        cfg.lighting,
        cfg.clean_prob,
        cfg.clean_resample,
        cfg.watermark_window,
        cfg.watermark_focus,
        cfg.zoom,
        cfg.text_weight,
        adversarial=True,
    )
    return step_loader(
        dataset,
        start,
        cfg.steps * (cfg.max_critic_steps + 1),
        cfg.batch_size,
        cfg.workers,
        session.ranks.rank,
        session.ranks.world,
    )


def scorer(cfg: TrainGanConfig, session: prelude.Session):
    """score(generator, step): the candidate's scores on every validation set, named by
    ``score_key``; and the first set, for the sample grids."""
    base = cfg.base
    sets = {
        kind: EvalPairs(base.paths.hr, base.paths.lr, "valid", base.scale, cfg.valid_crop, kind)
        for kind in cfg.valid_degradations
    }

    def score(gen, step: int) -> dict:
        scores = {"step": step}
        for kind, pairs in sets.items():
            found = validate(
                gen, pairs, session.device, session.dtype, base.scale, full=True, task=base.task
            )
            scores.update({score_key(kind, k): v for k, v in found.items()})
        return scores

    return score, next(iter(sets.values()))


def run(cfg: TrainGanConfig, tracker=None) -> dict:
    session = prelude.start(cfg.base)
    device, ranks = session.device, session.ranks
    gan, g_saved = build(cfg, session)
    score, valid = scorer(cfg, session)
    ckpt = rolling_checkpoint(cfg, ranks.main)
    best_file = ckpt.folder / "best.pt"
    rule = cfg.selection()

    def keep_best(model) -> None:
        if ranks.main:
            checkpoint.save(
                best_file, checkpoint.model_payload("generator", g_saved["arch"], model)
            )

    state = ckpt.restore()
    steps_log = StepLogger(STAGE, cfg.steps, tracker, cfg.log_every, quiet=not ranks.main)
    if state is not None:
        gan.load_state(state)
        steps_log.load_state(state.get("log"))
        steps_log.bar.update(state["step"])
        loop = Counters.from_state(state["loop"])
        history, best = list(state["history"]), dict(state["best"])
    else:
        loop = Counters()
        history = [score(gan.kept, 0)]
        best = dict(history[0])
        keep_best(gan.kept)
    loader = batches(cfg, loop.batches, session)
    speed = Throughput()
    gan.gen.train()
    gan.critic.train()
    for lr_img, hr_img, *pixel_weights in loader:
        if loop.generator_steps >= cfg.steps:
            break
        loop.batches += 1
        lr_img, hr_img = to_device(lr_img, device), to_device(hr_img, device)
        if loop.critic_turn:
            loss_d = gan.critic_step(hr_img, gan.fakes(lr_img))
            check_finite({"critic": loss_d}, loop.generator_steps, ckpt)
            # the switch reads the loss averaged over ranks, so every rank switches together
            loss_mean = distributed.mean(loss_d.item(), ranks)
            steps_log.emas_only({"critic_loss": loss_mean})
            loop.after_critic(loss_mean, cfg.threshold, cfg.max_critic_steps)
            continue
        losses = gan.generator_step(
            lr_img,
            hr_img,
            cfg.lr_at(loop.generator_steps),
            to_device(pixel_weights[0], device) if pixel_weights else None,
        )
        loop.after_generator()
        step = loop.generator_steps
        check_finite({"generator": losses["gen_loss"]}, step, ckpt)
        speed.tick(lr_img.shape[0] * ranks.world)
        values = {k: v.item() for k, v in losses.items()}
        steps_log.step(step, {**values, "critic_steps": loop.critic_steps}, speed.rate)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            cand = score(gan.kept, step)
            history.append(cand)
            kept = choose(cand, gan.kept, history[0], best, rule, g_saved["model"], score)
            if kept is not None:
                best = kept[0]
                keep_best(kept[1])
            steps_log.metrics(step, {f"valid_{k}": v for k, v in cand.items() if k != "step"})
            ckpt.save(
                step,
                **gan.state(),
                history=history,
                best=best,
                log=steps_log.state(),
                loop=loop.state(),
            )
            if tracker is not None:
                tracker.log_image(sample_grid(gan.kept, valid, device), key="samples", step=step)
            speed.resume()
    steps_log.close()
    if not ranks.main:
        return {"generator_steps": loop.generator_steps, "chosen_step": best["step"]}
    return finish(cfg, loop, history, best, best_file, speed, steps_log, tracker)


def finish(
    cfg: TrainGanConfig,
    loop: Counters,
    history: list[dict],
    best: dict,
    best_file: Path,
    speed: Throughput,
    steps_log: StepLogger,
    tracker,
) -> dict:
    """The chosen candidate becomes the stage's model; scores, plots and the registry follow."""
    base = cfg.base
    chosen = checkpoint.load(best_file, kind="generator")
    out_file = Path(base.paths.models) / "gan_generator.pt"
    checkpoint.save(out_file, {k: chosen[k] for k in ("kind", "arch", "model")})
    plots = Path(base.paths.plots)
    write_csv(plots / "gan_scores.csv", history)
    write_csv(plots / "gan_chosen.csv", [best])  # the chosen candidate, a series of its own
    write_csv(plots / f"{STAGE}_loss.csv", steps_log.curve)
    metrics = {
        "generator_steps": loop.generator_steps,
        "critic_steps": loop.critic_steps,
        "batches": loop.batches,
        "train_images_per_s": round(speed.rate, 2),
        "chosen_step": best["step"],
        "chosen_blend": best.get("blend", 1.0),  # its share in the kept weights; 1 = unblended
        # with max_psnr_drop, the trade the registry qualifies this generator by
        "select_metric": cfg.select_metric,
        "max_psnr_drop": cfg.max_psnr_drop,
        "chosen": {k: round(v, 5) for k, v in best.items() if k not in ("step", "blend")},
        "start": {k: round(v, 5) for k, v in history[0].items() if k != "step"},
    }
    write_results(base, STAGE, metrics, ["train_images_per_s"])
    if tracker is not None:
        final = build_generator(**chosen["arch"])
        final.load_state_dict(chosen["model"])
        # evaluate finds the registered version of the file it scores by this digest
        tracker.set_tags({DIGEST_TAG: sha256_file(out_file)})
        tracker.log_model(
            final.eval(), "gan_generator", registered_model_name=REGISTERED_MODEL[base.task]
        )
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, TrainGanConfig, run, argv, distributed=True)


if __name__ == "__main__":
    raise SystemExit(main())
