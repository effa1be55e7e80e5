"""Stage: a short GAN phase from both pretrained networks, picking its own best checkpoint.

The loop is the recipe's (fastai GANTrainer + AdaptiveGANSwitcher) written out plainly:
it starts with the critic and trains it until its batch loss falls below ``threshold``, then
makes one generator step (adversarial + ``content_weight`` x content loss), and so on. Each
batch feeds exactly one step. The network that only serves as the loss is frozen and in eval
mode. Beyond the recipe, a run of critic steps is capped at ``max_critic_steps``, because a
critic stuck at chance would otherwise starve the generator.

Checkpoint selection (instead of picking "just before the glitches" by eye): every
``checkpoint_every`` generator steps the generator is scored on the validation split. The
starting (pretrained) generator is candidate 0. A candidate is eligible when its validation
Y-PSNR is at most ``max_psnr_drop`` dB below candidate 0's; among the eligible ones the stage
keeps the best by ``select_metric`` (a perceptual score; HaarPSI by default), the earliest on
ties. So the GAN phase can trade a bounded amount of fidelity for perceptual quality, and
never returns a generator that collapsed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pipelines.training import checkpoint, distributed
from pipelines.core.config import BaseConfig, as_dict, bounded, section
from pipelines.crappify import CrappifyConfig
from pipelines.datasets.pairs import EvalPairs, step_loader, to_image
from pipelines.core.files import sha256_file, write_csv, write_json
from pipelines.scoring.losses import build_content_loss, critic_loss, generator_adv_loss
from pipelines.scoring.metrics import HIGHER_IS_BETTER, score
from pipelines.networks import build_critic, build_generator
from pipelines.pretrain_generator import train_dataset
from pipelines.running.progress import StepLogger
from pipelines.running.registry import DIGEST_TAG, REGISTERED_MODEL
from pipelines.core.runtime import autocast, autocast_dtype, make_deterministic, pick_device, seed_everything
from pipelines.running.stage import stage_main
from pipelines.training.loop import (RollingCheckpoint, Throughput, adamw, check_finite, fingerprint,
                                sample_grid)
from pipelines.imaging.visualize import line_plot

log = logging.getLogger(__name__)
STAGE = "train_gan"


@dataclass(frozen=True)
class TrainGanConfig:
    base: BaseConfig
    crappify: CrappifyConfig = section("crappify")
    steps: int = bounded(100, lo=1)                  # generator steps
    batch_size: int = bounded(8, lo=1)
    crop: int = bounded(0, lo=0)                     # 0 = base.crop
    data: Literal["fresh", "fixed"] = "fresh"
    lr: float = bounded(1e-4, lo=0, lo_open=True)
    critic_lr_mult: float = bounded(5.0, lo=0, lo_open=True)
    betas: tuple[float, float] = bounded((0.0, 0.99), lo=0, hi=1)
    weight_decay: float = bounded(1e-3, lo=0)
    adversarial: Literal["bce", "wgan-gp"] = "bce"
    adv_weight: float = bounded(1.0, lo=0)
    content: Literal["mse", "l1", "charbonnier", "feature"] = "l1"
    content_weight: float = bounded(50.0, lo=0)
    threshold: float = 0.65                          # critic trains until its loss is below this
    max_critic_steps: int = bounded(5, lo=1)
    checkpoint_every: int = bounded(20, lo=1)
    max_psnr_drop: float = bounded(0.5, lo=0)
    select_metric: Literal["haarpsi", "gmsd", "ms_ssim", "ssim_y", "psnr_y"] = "haarpsi"
    valid_crop: int = bounded(256, lo=0)
    lighting: float = bounded(0.1, lo=0, hi=1)
    clean_prob: float = bounded(0.0, lo=0, hi=1)
    clean_resample: tuple[str, ...] = ("area",)   # as pretrain_generator's
    workers: int = bounded(0, lo=0)
    log_every: int = bounded(10, lo=1)

    def check(self) -> None:
        for key in ("crop", "valid_crop"):
            self.base.check_crop(key, getattr(self, key))


@torch.no_grad()
def evaluate_candidate(model, valid: EvalPairs, device, dtype, border: int) -> dict[str, float]:
    model.eval()
    rows = []
    for i in range(len(valid)):
        lr, hr = valid[i]
        with autocast(device, dtype):
            sr = model(lr.unsqueeze(0).to(device))
        rows.append(score(to_image(sr[0]), to_image(hr), border))
    model.train()
    return {k: float(sum(r[k] for r in rows) / len(rows)) for k in rows[0]}


def better(candidate: dict, best: dict, metric: str) -> bool:
    if HIGHER_IS_BETTER[metric]:
        return candidate[metric] > best[metric]
    return candidate[metric] < best[metric]


def eligible(candidate: dict, start: dict, max_drop: float) -> bool:
    return candidate["psnr_y"] >= start["psnr_y"] - max_drop


def requires_grad(model: torch.nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


def run(cfg: TrainGanConfig, tracker=None) -> dict:
    base = cfg.base
    seed_everything(base.seed)
    make_deterministic()
    device = pick_device(base.device)
    ranks = distributed.init(device)
    dtype = autocast_dtype(device, base.precision)
    models_dir, border = Path(base.paths.models), base.scale
    gen_file, critic_file = models_dir / "generator.pt", models_dir / "critic.pt"
    g_saved = checkpoint.load(gen_file, kind="generator")
    d_saved = checkpoint.load(critic_file, kind="critic")
    gen = build_generator(**g_saved["arch"]).to(device)
    critic = build_critic(**d_saved["arch"]).to(device)
    gen.load_state_dict(g_saved["model"])
    critic.load_state_dict(d_saved["model"])
    content_fn = build_content_loss(cfg.content).to(device)
    valid = EvalPairs(base.paths.hr, base.paths.lr, "valid", base.scale, cfg.valid_crop)
    opt_g = adamw(gen.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = adamw(critic.parameters(), lr=cfg.lr * cfg.critic_lr_mult, betas=cfg.betas,
                              weight_decay=cfg.weight_decay)

    ckpt_dir = Path(base.paths.checkpoints) / STAGE
    ckpt = RollingCheckpoint(ckpt_dir, fingerprint(as_dict(cfg), [gen_file, critic_file]),
                             writer=ranks.main)
    best_file = ckpt_dir / "best.pt"
    state = ckpt.restore()
    steps_log = StepLogger(STAGE, cfg.steps, tracker, cfg.log_every, quiet=not ranks.main)
    if state is not None:
        gen.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        steps_log.load_state(state.get("log"))
        steps_log.bar.update(state["step"])
        s = state["loop"]
        g_steps, batches, critic_turn, critic_run, n_critic = (
            state["step"], s["batches"], s["critic_turn"], s["critic_run"], s["critic_steps"])
        history, best = list(state["history"]), dict(state["best"])
    else:
        g_steps = batches = critic_run = n_critic = 0
        critic_turn = True
        start = {"step": 0, **evaluate_candidate(gen, valid, device, dtype, border)}
        history, best = [start], dict(start)
        if ranks.main:
            checkpoint.save(best_file, checkpoint.model_payload("generator", g_saved["arch"], gen))
    start_scores = history[0]

    dataset = train_dataset(base, cfg.data, cfg.crappify, cfg.crop or base.crop, cfg.lighting,
                            cfg.clean_prob, cfg.clean_resample)
    # Enough batches for the worst case of max_critic_steps critic steps per generator step.
    max_batches = cfg.steps * (cfg.max_critic_steps + 1)
    loader = step_loader(dataset, batches, max_batches, cfg.batch_size, cfg.workers,
                         ranks.rank, ranks.world)
    # Each step trains one network through its DDP wrapper and uses the other bare and frozen,
    # so DDP never waits for gradients of a network that is not training.
    gen_t = distributed.wrap(gen, ranks, device, base.sync_batchnorm)
    critic_t = distributed.wrap(critic, ranks, device, base.sync_batchnorm)
    speed = Throughput()
    gen.train()
    critic.train()
    for lr_img, hr_img in loader:
        if g_steps >= cfg.steps:
            break
        batches += 1
        lr_img, hr_img = lr_img.to(device), hr_img.to(device)
        if critic_turn:
            requires_grad(critic, True)
            gen.eval()
            with torch.no_grad(), autocast(device, dtype):
                fake = gen(lr_img)
            critic.train()
            with autocast(device, dtype):
                loss_d = critic_loss(cfg.adversarial, critic_t, hr_img, fake.float())
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            check_finite({"critic": loss_d}, g_steps, ckpt)
            n_critic += 1
            critic_run += 1
            # the switch reads the loss averaged over ranks, so every rank switches together
            loss_mean = distributed.mean(loss_d.item(), ranks)
            steps_log.emas_only({"critic_loss": loss_mean})
            if loss_mean < cfg.threshold or critic_run >= cfg.max_critic_steps:
                critic_turn, critic_run = False, 0
            continue
        requires_grad(critic, False)
        critic.eval()
        gen.train()
        with autocast(device, dtype):
            fake = gen_t(lr_img).float()
            adv = generator_adv_loss(cfg.adversarial, critic(fake))
            content = content_fn(fake, hr_img)
            loss_g = cfg.adv_weight * adv + cfg.content_weight * content
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        g_steps += 1
        critic_turn = True
        check_finite({"generator": loss_g}, g_steps, ckpt)
        speed.tick(lr_img.shape[0] * ranks.world)
        steps_log.step(g_steps, {"gen_loss": loss_g.item(), "adv_loss": adv.item(),
                                 "content_loss": content.item(), "critic_steps": n_critic}, speed.rate)
        if g_steps % cfg.checkpoint_every == 0 or g_steps == cfg.steps:
            cand = {"step": g_steps, **evaluate_candidate(gen, valid, device, dtype, border)}
            history.append(cand)
            if eligible(cand, start_scores, cfg.max_psnr_drop) and better(cand, best, cfg.select_metric):
                best = dict(cand)
                if ranks.main:
                    checkpoint.save(best_file, checkpoint.model_payload("generator", g_saved["arch"], gen))
            steps_log.metrics(g_steps, {f"valid_{k}": v for k, v in cand.items() if k != "step"})
            ckpt.save(g_steps, generator=gen.state_dict(), critic=critic.state_dict(),
                      opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), history=history, best=best,
                      log=steps_log.state(),
                      loop={"batches": batches, "critic_turn": critic_turn, "critic_run": critic_run,
                            "critic_steps": n_critic})
            if tracker is not None:
                tracker.log_image(sample_grid(gen, valid, device), f"samples/step_{g_steps:06d}.png")
            speed.resume()
    steps_log.close()
    if not ranks.main:
        return {"generator_steps": g_steps, "chosen_step": best["step"]}
    chosen = checkpoint.load(best_file, kind="generator")
    out_file = models_dir / "gan_generator.pt"
    checkpoint.save(out_file, {k: chosen[k] for k in ("kind", "arch", "model")})
    plots = Path(base.paths.plots)
    write_csv(plots / "gan_scores.csv", history)
    metric_names = [k for k in history[0] if k != "step"]
    line_plot([h["step"] for h in history], {k: [h[k] for h in history] for k in metric_names},
              plots / "gan_scores.png", "GAN checkpoints on the validation split")
    metrics = {"generator_steps": g_steps, "critic_steps": n_critic, "batches": batches,
               "train_images_per_s": round(speed.rate, 2), "chosen_step": best["step"],
               "select_metric": cfg.select_metric,
               "chosen": {k: round(v, 5) for k, v in best.items() if k != "step"},
               "start": {k: round(v, 5) for k, v in start_scores.items() if k != "step"}}
    write_json(Path(base.paths.metrics) / f"{STAGE}.json", metrics)
    if tracker is not None:
        tracker.log_artifact(plots / "gan_scores.png")
        final = build_generator(**chosen["arch"])
        final.load_state_dict(chosen["model"])
        # evaluate finds the registered version of the file it scores by this digest
        tracker.set_tags({DIGEST_TAG: sha256_file(out_file)})
        tracker.log_model(final.eval(), "gan_generator", registered_model_name=REGISTERED_MODEL)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, TrainGanConfig, run, argv, distributed=True)


if __name__ == "__main__":
    raise SystemExit(main())
