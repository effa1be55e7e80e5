"""Stage: pretrain the generator (U-Net or residual network) to undo the crappification.

Phases run one after another, each with its own one-cycle schedule (the recipe's
``fit_one_cycle`` calls): optionally frozen encoder first, then unfrozen with discriminative
learning rates, optionally at a larger crop (progressive resizing). Beyond the recipe, the
default draws a fresh degradation for every training crop instead of reusing one fixed
crappified copy per photo, which matters on small datasets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from pipelines.core.config import BaseConfig, ConfigError, as_dict, bounded, section
from pipelines.core.files import write_csv
from pipelines.core.fingerprint import fingerprint
from pipelines.core.results import write_results
from pipelines.core.runtime import autocast, to_device
from pipelines.core.tasks import FIDELITY, REFERENCE
from pipelines.datasets.degraded import train_dataset
from pipelines.datasets.pairs import (
    CLEAN_RESAMPLE,
    NO_ZOOM,
    EvalPairs,
    check_text_window,
    check_zoom,
    step_loader,
)
from pipelines.imaging.degradations import CrappifyConfig
from pipelines.networks import build_generator, freeze_encoder, param_groups
from pipelines.running.progress import StepLogger
from pipelines.running.stage import stage_main
from pipelines.scoring import stlpips
from pipelines.scoring.losses import Content, build_content_loss, check_text_weight
from pipelines.training import checkpoint, distributed, prelude
from pipelines.training.ema import ModelEMA
from pipelines.training.loop import RollingCheckpoint, Throughput, adamw, check_finite, set_lr
from pipelines.training.schedule import one_cycle, one_cycle_beta1
from pipelines.training.validation import Bicubic, sample_grid, validate

log = logging.getLogger(__name__)
STAGE = "pretrain_generator"


# not U-Net arguments: the residual network's keys, and chroma (``arch`` adds it where it counts)
UNET_EXCLUDED = ("kind", "channels", "blocks", "colour_stride", "chroma", "upsampler", "unshuffle")


@dataclass(frozen=True)
class GeneratorModel:
    # unet: the U-Net on a ResNet encoder (the recipe); srresnet: residual blocks at the input
    # resolution, then pixel shuffles (pipelines/networks/srresnet.py)
    kind: Literal["unet", "srresnet"] = "unet"
    # unet only
    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet18"
    # imagenet | none | a path to a state dict
    pretrained: str = "imagenet"
    blur: bool = True
    blur_final: bool = True
    self_attention: bool = True
    norm: Literal["weight", "spectral", "none"] = "weight"
    hr_channels: int = bounded(32, lo=8)  # channels of the blocks above the input resolution
    lr_cross: bool = True  # input merged into the features at input resolution
    # srresnet only
    channels: int = bounded(64, lo=4)
    blocks: int = bounded(16, lo=0)
    # srresnet colorizing at scale 1: chroma predicted at 1/colour_stride of the size
    colour_stride: int = bounded(1, lo=1, hi=16)
    # a restorer's output chroma: network (its own) | input (the input's, bicubic-upsampled:
    # the network restores the luminance only); a colorizer ignores it
    chroma: Literal["network", "input"] = "network"
    # srresnet: staged (conv + PixelShuffle 2 per factor 2) | direct (one PixelShuffle)
    upsampler: Literal["staged", "direct"] = "staged"
    # srresnet: the body's cell, px a side (2, 4: unshuffled into channels; direct upsampler)
    unshuffle: Literal[1, 2, 4] = 1

    def arch(self, scale: int, task: str = "restore") -> dict:
        """``build_generator``'s keywords; a U-Net's dict has no ``kind`` key and a restorer's
        no ``task``, as before they existed, so their model files and checkpoints stay as they
        were."""
        # keys added after the first model files, written only where they differ from what
        # those files meant
        added = {"task": task} if task != "restore" else {}
        # a colorizer's chroma is its task, whatever this says (so `-S base.task=colorize`
        # works on the restorer's params); files of network-chroma models keep their arch
        if self.chroma != "network" and task == "restore":
            added["chroma"] = self.chroma
        if self.kind == "srresnet":
            if task != "restore":
                added["colour_stride"] = self.colour_stride
            if self.upsampler != "staged":
                added["upsampler"] = self.upsampler
            if self.unshuffle != 1:
                added["unshuffle"] = self.unshuffle
            return {
                "kind": "srresnet",
                "scale": scale,
                "channels": self.channels,
                "blocks": self.blocks,
                **added,
            }
        unet = {k: v for k, v in as_dict(self).items() if k not in UNET_EXCLUDED}
        return {**unet, "scale": scale, **added}


@dataclass(frozen=True)
class Phase:
    steps: int = bounded(100, lo=1)
    crop: int = bounded(0, lo=0)  # 0 = base.crop
    batch_size: int = bounded(8, lo=1)
    lr: float = bounded(1e-3, lo=0, lo_open=True)
    frozen: bool = False  # encoder frozen (sensible only with pretrained weights)


@dataclass(frozen=True)
class PretrainGeneratorConfig:
    base: BaseConfig
    crappify: CrappifyConfig = section("crappify")
    model: GeneratorModel = field(default_factory=GeneratorModel)
    loss: Content = "l1"
    # weight of the ST-LPIPS distance added to the loss (0 = none), through this network
    perceptual: float = bounded(0.0, lo=0)
    perceptual_net: Literal["alex", "vgg"] = "alex"
    # fresh: a new degradation per crop; fixed: crops of the crappify stage's files (the recipe)
    data: Literal["fresh", "fixed"] = "fresh"
    phases: tuple[Phase, ...] = (Phase(),)
    pct_start: float = bounded(0.25, lo=0, hi=1)
    weight_decay: float = bounded(1e-3, lo=0)
    # learning-rate multipliers of [encoder stem..layer2, layer3..4, decoder] when unfrozen
    lr_ratios: tuple[float, float, float] = bounded((1.0, 1.0, 1.0), lo=0)
    lighting: float = bounded(0.1, lo=0, hi=1)
    # share of fresh training crops that are only downscaled (no JPEG, no watermark)
    clean_prob: float = bounded(0.0, lo=0, hi=1)
    # their downscale kernel, drawn per crop from this list (pipelines.datasets.pairs.CLEAN_RESAMPLE)
    clean_resample: tuple[str, ...] = ("area",)
    # LR px: crappy crops' text is drawn on a window of their photo from this size up to the
    # whole photo (TrainPairs._text_frame); 0 = on the whole photo
    watermark_window: int = bounded(0, lo=0)
    # share of windowed crappy crops (photos larger than the window) placed where their
    # window's text is drawn; needs watermark_window; 0 = none
    watermark_focus: float = bounded(0.0, lo=0, hi=1)
    # [lo, hi]: each fresh HR crop is cut from its photo shrunk by a factor log-uniform in
    # this range (TrainPairs._zoomed_crop); [1, 1] = the photo's own size
    zoom: tuple[float, float] = NO_ZOOM
    # the pixel loss's weight inside a crappy crop's watermark is 1 + this (its strokes, grown
    # by one LR px, as evaluate's mask_psnr_y); 0 = every pixel alike
    text_weight: float = bounded(0.0, lo=0)
    # decay of the exponential moving average of the weights that is validated and saved;
    # 0 = none (the last weights)
    ema: float = bounded(0.0, lo=0, hi=0.99999)
    workers: int = bounded(0, lo=0)
    valid_crop: int = bounded(256, lo=0)  # centre crop of validation images, 0 = whole image
    eval_every: int = bounded(100, lo=1)
    checkpoint_every: int = bounded(50, lo=1)
    log_every: int = bounded(10, lo=1)
    sample_every: int = bounded(200, lo=0)  # 0 = only at the end

    def check(self) -> None:
        check_text_window(self.watermark_window, self.watermark_focus)
        check_zoom(self.zoom, self.data)
        check_text_weight(self.text_weight, self.loss, self.data)
        if not self.phases:
            raise ConfigError("phases: at least one phase is needed")
        weights = stlpips.weights_file(self.perceptual_net)
        if self.perceptual > 0 and (weights is None or not weights.is_file()):
            raise ConfigError(
                f"perceptual: {self.perceptual} needs the ST-LPIPS {self.perceptual_net} "
                "weights of the stlpips-pytorch package (pip install stlpips-pytorch)"
            )
        for i, p in enumerate(self.phases):
            self.base.check_crop(f"phases[{i}].crop", p.crop or self.base.crop)
        self.base.check_crop("valid_crop", self.valid_crop)
        if self.model.colour_stride > 1 and (
            self.model.kind != "srresnet" or self.base.task != "colorize" or self.base.scale != 1
        ):
            raise ConfigError(
                f"model.colour_stride: {self.model.colour_stride} needs model.kind srresnet, "
                f"base.task colorize and base.scale 1 (here {self.model.kind}, "
                f"{self.base.task}, {self.base.scale})"
            )
        m = self.model
        if m.unshuffle > 1 and (
            m.kind != "srresnet" or m.upsampler != "direct" or self.base.task != "restore"
        ):
            raise ConfigError(
                f"model.unshuffle: {m.unshuffle} needs model.kind srresnet, model.upsampler "
                f"direct and base.task restore (here {m.kind}, {m.upsampler}, {self.base.task})"
            )
        if self.model.kind != "unet" and any(p.frozen for p in self.phases):
            raise ConfigError(
                f"phases: frozen needs an encoder; model.kind {self.model.kind!r} has none"
            )
        unknown = [k for k in self.clean_resample if k not in CLEAN_RESAMPLE]
        if not self.clean_resample or unknown:
            raise ConfigError(
                f"clean_resample: {list(self.clean_resample)!r} must be a non-empty "
                f"list of {', '.join(CLEAN_RESAMPLE)}"
            )

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


def model_path(base: BaseConfig) -> Path:
    return Path(base.paths.models) / "generator.pt"


def phase_optimizer(
    cfg: PretrainGeneratorConfig, model: torch.nn.Module, index: int, state: dict | None
) -> tuple[torch.optim.Optimizer, tuple[float, ...]]:
    """A fresh AdamW for phase ``index`` (its state restored when resuming mid-phase) and the
    learning-rate multipliers of the three parameter groups."""
    phase = cfg.phases[index]
    freeze_encoder(model, phase.frozen)
    opt = adamw(
        [{"params": g, "lr": phase.lr} for g in param_groups(model)],
        betas=(0.9, 0.99),
        weight_decay=cfg.weight_decay,
    )
    if state is not None and state.get("phase") == index and "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    return opt, (0.0, 0.0, 1.0) if phase.frozen else cfg.lr_ratios


def phase_batches(
    cfg: PretrainGeneratorConfig, phase: Phase, start: int, offset: int, ranks: distributed.Ranks
):
    """The batches of ``phase`` from its step ``start`` on; ``offset`` samples came before it."""
    base = cfg.base
    dataset = train_dataset(
        base,
        cfg.data,
        cfg.crappify,
        phase.crop or base.crop,
        cfg.lighting,
        cfg.clean_prob,
        cfg.clean_resample,
        cfg.watermark_window,
        cfg.watermark_focus,
        cfg.zoom,
        cfg.text_weight,
    )
    return step_loader(
        dataset,
        start,
        phase.steps,
        phase.batch_size,
        cfg.workers,
        ranks.rank,
        ranks.world,
        offset=offset,
    )


def resume(
    cfg: PretrainGeneratorConfig, model: torch.nn.Module, ema: ModelEMA | None, writer: bool
) -> tuple[RollingCheckpoint, dict | None]:
    """The stage's rolling checkpoint and the state it resumes, if any, loaded into ``model``
    and ``ema``; the optimizer's is loaded with its phase."""
    base = cfg.base
    ckpt = RollingCheckpoint(
        Path(base.paths.checkpoints) / STAGE,
        fingerprint(as_dict(cfg), [Path(base.paths.hr) / "manifest.csv"], stage=STAGE),
        writer=writer,
    )
    state = ckpt.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
    return ckpt, state


def run(cfg: PretrainGeneratorConfig, tracker=None) -> dict:
    base, session = cfg.base, prelude.start(cfg.base)
    device, ranks, dtype = session.device, session.ranks, session.dtype
    model = to_device(build_generator(**cfg.model.arch(base.scale, base.task)), device)
    ema = ModelEMA(model, cfg.ema) if cfg.ema else None
    kept = ema.model if ema is not None else model  # validated and saved: the average, if any
    loss_fn = build_content_loss(
        cfg.loss,
        perceptual=cfg.perceptual,
        perceptual_net=cfg.perceptual_net,
        luminance=model.chroma == "input",
    ).to(device)
    valid = EvalPairs(base.paths.hr, base.paths.lr, "valid", base.scale, cfg.valid_crop)
    task = base.task
    fid = FIDELITY[task]
    baseline = validate(
        Bicubic(base.scale, gray=task == "colorize"), valid, device, None, base.scale, task=task
    )
    ckpt, state = resume(cfg, model, ema, ranks.main)
    step = state["step"] if state else 0
    steps_log = StepLogger(
        STAGE, cfg.total_steps, tracker, cfg.log_every, start=step, quiet=not ranks.main
    )
    steps_log.load_state(state.get("log") if state else None)
    speed = Throughput()
    history: list[dict] = list(state.get("history", [])) if state else []
    phase_start = samples_before = 0
    for index, phase in enumerate(cfg.phases):
        phase_end = phase_start + phase.steps
        if step < phase_end:
            opt, ratios = phase_optimizer(cfg, model, index, state)
            trained = distributed.wrap(model, ranks, device, base.sync_batchnorm)
            loader = phase_batches(cfg, phase, step - phase_start, samples_before, ranks)
            speed.resume()
            for lr_img, hr_img, *pixel_weights in loader:
                local = step - phase_start
                peak = one_cycle(local, phase.steps, phase.lr, cfg.pct_start)
                set_lr(
                    opt,
                    [peak * r for r in ratios],
                    one_cycle_beta1(local, phase.steps, cfg.pct_start),
                )
                lr_img, hr_img = to_device(lr_img, device), to_device(hr_img, device)
                weights = to_device(pixel_weights[0], device) if pixel_weights else None
                with autocast(device, dtype):
                    loss = loss_fn(trained(lr_img).float(), hr_img, weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                check_finite({"generator": loss}, step, ckpt)
                speed.tick(lr_img.shape[0] * ranks.world)
                steps_log.step(step, {"loss": loss.item(), "lr": peak}, speed.rate)
                if step % cfg.eval_every == 0 or step == cfg.total_steps:
                    scores = validate(kept, valid, device, dtype, base.scale, task=task)
                    scores["gain_db"] = scores[fid] - baseline[fid]
                    history.append({"step": step, **scores})
                    steps_log.metrics(step, {f"valid_{k}": v for k, v in scores.items()})
                if step % cfg.checkpoint_every == 0 or step == phase_end:
                    # at a phase's end the next phase starts with a fresh optimizer, resumed or not
                    mid_phase = {"optimizer": opt.state_dict()} if step < phase_end else {}
                    ckpt.save(
                        step,
                        phase=index if step < phase_end else index + 1,
                        model=model.state_dict(),
                        history=history,
                        log=steps_log.state(),
                        **mid_phase,
                        **({"ema": ema.state_dict()} if ema else {}),
                    )
                if tracker is not None and cfg.sample_every and step % cfg.sample_every == 0:
                    tracker.log_image(sample_grid(kept, valid, device), key="samples", step=step)
                speed.resume()
            state = None
        phase_start = phase_end
        samples_before += phase.steps * phase.batch_size
    steps_log.close()
    return finish(cfg, kept, history, baseline, steps_log, speed, valid, session, tracker)


def finish(
    cfg: PretrainGeneratorConfig,
    model: torch.nn.Module,
    history: list[dict],
    baseline: dict,
    steps_log: StepLogger,
    speed: Throughput,
    valid: EvalPairs,
    session: prelude.Session,
    tracker,
) -> dict:
    """The trained network becomes the stage's model file; scores and samples follow."""
    base, final = cfg.base, history[-1]
    metrics = {
        "steps": cfg.total_steps,
        "train_images_per_s": round(speed.rate, 2),
        "valid_psnr_y": round(final["psnr_y"], 4),
        "valid_ssim_y": round(final["ssim_y"], 5),
        "valid_gain_db": round(final["gain_db"], 4),
        f"valid_{REFERENCE[base.task]}_{FIDELITY[base.task]}": round(
            baseline[FIDELITY[base.task]], 4
        ),
        "train_loss": round(steps_log.ema or float("nan"), 6),
    }
    if not session.ranks.main:
        return metrics
    # model.arch rebuilds the network without fetching pretrained weights again
    checkpoint.save(model_path(base), checkpoint.model_payload("generator", model.arch, model))
    write_results(base, STAGE, metrics, ["train_images_per_s"])
    write_csv(Path(base.paths.plots) / f"{STAGE}.csv", history)
    write_csv(Path(base.paths.plots) / f"{STAGE}_loss.csv", steps_log.curve)
    if tracker is not None:
        tracker.log_image(sample_grid(model, valid, session.device), "samples/final.png")
        tracker.log_model(model, "generator")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, PretrainGeneratorConfig, run, argv, distributed=True)


if __name__ == "__main__":
    raise SystemExit(main())
