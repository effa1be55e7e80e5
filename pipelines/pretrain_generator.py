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

from pipelines.training import checkpoint, distributed
from pipelines.training.ema import ModelEMA
from pipelines.core.config import BaseConfig, ConfigError, as_dict, bounded, section
from pipelines.crappify import CrappifyConfig
from pipelines.datasets.pairs import (CLEAN_RESAMPLE, EvalPairs, TrainPairs, lr_path_for,
                                     split_files, step_loader)
from pipelines.imaging.degradations import make_degrader
from pipelines.core.files import write_csv, write_json
from pipelines.scoring.losses import build_content_loss
from pipelines.networks import build_generator, freeze_encoder, param_groups
from pipelines.running.progress import StepLogger
from pipelines.core.runtime import autocast, autocast_dtype, make_deterministic, pick_device, seed_everything
from pipelines.training.schedule import one_cycle, one_cycle_beta1
from pipelines.running.stage import stage_main
from pipelines.training.loop import (Bicubic, RollingCheckpoint, adamw, Throughput, check_finite, fingerprint,
                                sample_grid, set_lr, validate)

log = logging.getLogger(__name__)
STAGE = "pretrain_generator"


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
    lr_cross: bool = True                 # input merged into the features at input resolution
    # srresnet only
    channels: int = bounded(64, lo=4)
    blocks: int = bounded(16, lo=0)

    def arch(self, scale: int) -> dict:
        """``build_generator``'s keywords; a U-Net's dict has no ``kind`` key, as before it
        existed, so its model files and checkpoints stay as they were."""
        if self.kind == "srresnet":
            return {"kind": "srresnet", "scale": scale, "channels": self.channels,
                    "blocks": self.blocks}
        unet = {k: v for k, v in as_dict(self).items() if k not in ("kind", "channels", "blocks")}
        return {**unet, "scale": scale}


@dataclass(frozen=True)
class Phase:
    steps: int = bounded(100, lo=1)
    crop: int = bounded(0, lo=0)          # 0 = base.crop
    batch_size: int = bounded(8, lo=1)
    lr: float = bounded(1e-3, lo=0, lo_open=True)
    frozen: bool = False                  # encoder frozen (sensible only with pretrained weights)


@dataclass(frozen=True)
class PretrainGeneratorConfig:
    base: BaseConfig
    crappify: CrappifyConfig = section("crappify")
    model: GeneratorModel = field(default_factory=GeneratorModel)
    loss: Literal["mse", "l1", "charbonnier", "feature"] = "l1"
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
        if not self.phases:
            raise ConfigError("phases: at least one phase is needed")
        for i, p in enumerate(self.phases):
            self.base.check_crop(f"phases[{i}].crop", p.crop or self.base.crop)
        self.base.check_crop("valid_crop", self.valid_crop)
        if self.model.kind != "unet" and any(p.frozen for p in self.phases):
            raise ConfigError(f"phases: frozen needs an encoder; model.kind {self.model.kind!r} "
                              "has none")
        unknown = [k for k in self.clean_resample if k not in CLEAN_RESAMPLE]
        if not self.clean_resample or unknown:
            raise ConfigError(f"clean_resample: {list(self.clean_resample)!r} must be a non-empty "
                              f"list of {', '.join(CLEAN_RESAMPLE)}")

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


def model_path(base: BaseConfig) -> Path:
    return Path(base.paths.models) / "generator.pt"


def train_dataset(base: BaseConfig, data_mode: str, crappify: CrappifyConfig, crop: int,
                  lighting: float, clean_prob: float,
                  clean_resample: tuple[str, ...] = ("area",)) -> TrainPairs:
    """The (LR, HR) training crops shared by generator pretraining and the GAN phase."""
    hr_root = Path(base.paths.hr)
    hr_files = split_files(hr_root, "train")
    if data_mode == "fresh":
        return TrainPairs(hr_files, crop, base.scale, base.seed, degrade=make_degrader(crappify),
                          lighting=lighting, clean_prob=clean_prob, clean_resample=clean_resample)
    lr_files = [lr_path_for(f, hr_root, Path(base.paths.lr)) for f in hr_files]
    return TrainPairs(hr_files, crop, base.scale, base.seed, lr_files=lr_files, lighting=lighting)


def run(cfg: PretrainGeneratorConfig, tracker=None) -> dict:
    base, crappify = cfg.base, cfg.crappify
    seed_everything(base.seed)
    make_deterministic()
    device = pick_device(base.device)
    ranks = distributed.init(device)
    dtype = autocast_dtype(device, base.precision)
    arch = cfg.model.arch(base.scale)
    model = build_generator(**arch).to(device)
    ema = ModelEMA(model, cfg.ema) if cfg.ema else None
    # what is validated and saved: the average when there is one
    kept = ema.model if ema is not None else model
    loss_fn = build_content_loss(cfg.loss).to(device)
    valid = EvalPairs(base.paths.hr, base.paths.lr, "valid", base.scale, cfg.valid_crop)
    border = base.scale
    baseline = validate(Bicubic(base.scale), valid, device, None, border)

    hr_manifest = Path(base.paths.hr) / "manifest.csv"
    ckpt = RollingCheckpoint(Path(base.paths.checkpoints) / STAGE,
                             fingerprint(as_dict(cfg), [hr_manifest]), writer=ranks.main)
    state = ckpt.restore()
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step = state["step"]

    steps_log = StepLogger(STAGE, cfg.total_steps, tracker, cfg.log_every, start=step,
                           quiet=not ranks.main)
    steps_log.load_state(state.get("log") if state else None)
    speed = Throughput()
    history: list[dict] = list(state.get("history", [])) if state else []
    phase_start = samples_before = 0
    for index, phase in enumerate(cfg.phases):
        phase_end = phase_start + phase.steps
        if step < phase_end:
            freeze_encoder(model, phase.frozen)
            trained = distributed.wrap(model, ranks, device, base.sync_batchnorm)
            groups = param_groups(model)
            ratios = (0.0, 0.0, 1.0) if phase.frozen else cfg.lr_ratios
            opt = adamw([{"params": g, "lr": phase.lr} for g in groups],
                        betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
            if state is not None and state.get("phase") == index and "optimizer" in state:
                opt.load_state_dict(state["optimizer"])
            dataset = train_dataset(base, cfg.data, crappify, phase.crop or base.crop, cfg.lighting,
                                    cfg.clean_prob, cfg.clean_resample)
            loader = step_loader(dataset, step - phase_start, phase.steps, phase.batch_size,
                                 cfg.workers, ranks.rank, ranks.world, offset=samples_before)
            speed.resume()
            for lr_img, hr_img in loader:
                local = step - phase_start
                peak = one_cycle(local, phase.steps, phase.lr, cfg.pct_start)
                set_lr(opt, [peak * r for r in ratios], one_cycle_beta1(local, phase.steps, cfg.pct_start))
                lr_img, hr_img = lr_img.to(device), hr_img.to(device)
                with autocast(device, dtype):
                    loss = loss_fn(trained(lr_img).float(), hr_img)
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
                    scores = validate(kept, valid, device, dtype, border)
                    scores["gain_db"] = scores["psnr_y"] - baseline["psnr_y"]
                    history.append({"step": step, **scores})
                    steps_log.metrics(step, {f"valid_{k}": v for k, v in scores.items()})
                if step % cfg.checkpoint_every == 0 or step == phase_end:
                    # at a phase's end the next phase starts with a fresh optimizer, resumed or not
                    mid_phase = {"optimizer": opt.state_dict()} if step < phase_end else {}
                    ckpt.save(step, phase=index if step < phase_end else index + 1,
                              model=model.state_dict(), history=history, log=steps_log.state(),
                              **mid_phase, **({"ema": ema.state_dict()} if ema else {}))
                if tracker is not None and cfg.sample_every and step % cfg.sample_every == 0:
                    tracker.log_image(sample_grid(kept, valid, device), f"samples/step_{step:06d}.png")
                speed.resume()
            state = None
        phase_start = phase_end
        samples_before += phase.steps * phase.batch_size
    steps_log.close()
    final = history[-1]
    metrics = {"steps": step, "train_images_per_s": round(speed.rate, 2),
               "valid_psnr_y": round(final["psnr_y"], 4), "valid_ssim_y": round(final["ssim_y"], 5),
               "valid_gain_db": round(final["gain_db"], 4),
               "valid_bicubic_psnr_y": round(baseline["psnr_y"], 4),
               "train_loss": round(steps_log.ema or float("nan"), 6)}
    if not ranks.main:
        return metrics
    # model.arch rebuilds the network without fetching pretrained weights again
    checkpoint.save(model_path(base), checkpoint.model_payload("generator", kept.arch, kept))
    write_json(Path(base.paths.metrics) / f"{STAGE}.json", metrics)
    write_csv(Path(base.paths.plots) / f"{STAGE}.csv", history)
    if tracker is not None:
        tracker.log_image(sample_grid(kept, valid, device), "samples/final.png")
        tracker.log_model(kept, "generator")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, PretrainGeneratorConfig, run, argv, distributed=True)


if __name__ == "__main__":
    raise SystemExit(main())
