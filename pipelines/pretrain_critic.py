"""Stage: pretrain the patch critic on the pretrained generator's outputs versus real photos.

The generated images (train and valid splits) are a stage output, as in the recipe, so the
critic's data can be inspected. Accuracy is measured on the validation split's images: an
image counts as recognised when the mean of its patch logits has the right sign.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.core.config import BaseConfig, as_dict, bounded
from pipelines.core.files import atomic_dir, write_csv
from pipelines.core.fingerprint import fingerprint
from pipelines.core.results import write_results
from pipelines.core.runtime import autocast, to_device
from pipelines.datasets.pairs import (
    CriticPairs,
    aligned_lr,
    lr_path_for,
    real_examples,
    split_files,
    step_loader,
)
from pipelines.imaging.images import read_rgb, write_image
from pipelines.imaging.tensors import centre_crop, to_tensor
from pipelines.inference.restore import load_generator, restore
from pipelines.networks import build_critic
from pipelines.running.progress import StepLogger
from pipelines.running.stage import stage_main
from pipelines.scoring.losses import Adversarial, critic_loss
from pipelines.training import checkpoint, distributed, prelude
from pipelines.training.loop import RollingCheckpoint, Throughput, adamw, check_finite, set_lr
from pipelines.training.schedule import one_cycle

log = logging.getLogger(__name__)
STAGE = "pretrain_critic"
SPLITS = ("train", "valid")


@dataclass(frozen=True)
class CriticModel:
    nf: int = bounded(32, lo=4)
    n_blocks: int = bounded(3, lo=1, hi=6)
    p: float = bounded(0.15, lo=0, hi=1)
    self_attention: bool = True


@dataclass(frozen=True)
class PretrainCriticConfig:
    base: BaseConfig
    model: CriticModel = field(default_factory=CriticModel)
    loss: Adversarial = "bce"
    steps: int = bounded(100, lo=1)
    batch_size: int = bounded(8, lo=1)  # pairs: each step sees batch_size real and fake crops
    crop: int = bounded(0, lo=0)  # 0 = base.crop
    lr: float = bounded(1e-3, lo=0, lo_open=True)
    pct_start: float = bounded(0.25, lo=0, hi=1)
    weight_decay: float = bounded(1e-3, lo=0)
    workers: int = bounded(0, lo=0)
    tile: int = bounded(256, lo=16)  # LR tile size when generating the fakes
    checkpoint_every: int = bounded(50, lo=1)
    log_every: int = bounded(10, lo=1)


def model_path(base: BaseConfig) -> Path:
    return Path(base.paths.models) / "critic.pt"


def generate(
    base: BaseConfig,
    generator_file: Path,
    device: torch.device,
    dtype: torch.dtype | None,
    tile: int,
) -> int:
    """Restore every train/valid LR image with the generator into paths.generated (atomic)."""
    model = load_generator(generator_file, device)
    hr_root, lr_root = Path(base.paths.hr), Path(base.paths.lr)
    count = 0
    with atomic_dir(base.paths.generated) as out:
        for split in SPLITS:
            for hr_file in split_files(hr_root, split):
                lr, _ = aligned_lr(
                    read_rgb(lr_path_for(hr_file, hr_root, lr_root)), read_rgb(hr_file), base.scale
                )
                fake = restore(model, lr, tile=tile, device=device, dtype=dtype)
                write_image((out / hr_file.relative_to(hr_root)).with_suffix(".png"), fake)
                count += 1
    return count


def pairs(base: BaseConfig, split: str) -> tuple[list[Path], list[Path]]:
    hr_root, gen_root = Path(base.paths.hr), Path(base.paths.generated)
    real = real_examples(split_files(hr_root, split), base.task)
    return real, [(gen_root / f.relative_to(hr_root)).with_suffix(".png") for f in real]


@torch.no_grad()
def accuracy(
    critic: torch.nn.Module, base: BaseConfig, split: str, crop: int, device: torch.device
) -> dict[str, float]:
    """Share of real and of generated images the critic labels correctly (centre crops)."""
    was_training = critic.training
    critic.eval()
    real_ok = fake_ok = 0
    reals, fakes = pairs(base, split)
    for real_file, fake_file in zip(reals, fakes):
        fake = read_rgb(fake_file)
        real = read_rgb(real_file)[: fake.shape[0], : fake.shape[1]]
        batch = torch.stack(
            [to_tensor(centre_crop(real, crop * 2)), to_tensor(centre_crop(fake, crop * 2))]
        )
        logits = critic(batch.to(device)).float().mean(dim=1)
        real_ok += int(logits[0] > 0)
        fake_ok += int(logits[1] <= 0)
    critic.train(was_training)
    n = len(reals)
    return {
        "accuracy": (real_ok + fake_ok) / (2 * n),
        "real_accuracy": real_ok / n,
        "fake_accuracy": fake_ok / n,
    }


def run(cfg: PretrainCriticConfig, tracker=None) -> dict:
    base = cfg.base
    session = prelude.start(base)
    device, ranks, dtype = session.device, session.ranks, session.dtype
    generator_file = Path(base.paths.models) / "generator.pt"
    if ranks.main:
        generated = generate(base, generator_file, device, dtype, cfg.tile)
        log.info("generated %d images into %s", generated, base.paths.generated)
    distributed.barrier(ranks)

    arch = as_dict(cfg.model)
    critic = to_device(build_critic(**arch), device)
    crop = cfg.crop or base.crop
    ckpt = RollingCheckpoint(
        Path(base.paths.checkpoints) / STAGE,
        fingerprint(
            as_dict(cfg), [generator_file, Path(base.paths.hr) / "manifest.csv"], stage=STAGE
        ),
        writer=ranks.main,
    )
    opt = adamw(critic.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    step = 0
    state = ckpt.restore()
    steps_log = StepLogger(STAGE, cfg.steps, tracker, cfg.log_every, quiet=not ranks.main)
    if state is not None:
        critic.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        steps_log.load_state(state.get("log"))
        step = state["step"]
        steps_log.bar.update(step)
    real, fake = pairs(base, "train")
    loader = step_loader(
        CriticPairs(real, fake, crop, base.seed),
        step,
        cfg.steps,
        cfg.batch_size,
        cfg.workers,
        ranks.rank,
        ranks.world,
    )
    trained = distributed.wrap(critic, ranks, device, base.sync_batchnorm)
    speed = Throughput()
    for fake_img, real_img in loader:
        set_lr(opt, [one_cycle(step, cfg.steps, cfg.lr, cfg.pct_start)])
        fake_img, real_img = to_device(fake_img, device), to_device(real_img, device)
        with autocast(device, dtype):
            loss = critic_loss(cfg.loss, trained, real_img, fake_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        check_finite({"critic": loss}, step, ckpt)
        speed.tick(2 * fake_img.shape[0] * ranks.world)
        steps_log.step(step, {"loss": loss.item()}, speed.rate)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            ckpt.save(
                step, model=critic.state_dict(), optimizer=opt.state_dict(), log=steps_log.state()
            )
            speed.resume()
    steps_log.close()
    if not ranks.main:
        return {"steps": step}
    checkpoint.save(model_path(base), checkpoint.model_payload("critic", arch, critic))
    acc = accuracy(critic, base, "valid", crop, device)
    metrics = {
        "steps": step,
        "generated_images": generated,
        "train_images_per_s": round(speed.rate, 2),
        "train_loss": round(steps_log.ema or float("nan"), 6),
        **{f"valid_{k}": round(v, 4) for k, v in acc.items()},
    }
    write_results(base, STAGE, metrics, ["train_images_per_s"])
    write_csv(Path(base.paths.plots) / f"{STAGE}_loss.csv", steps_log.curve)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, PretrainCriticConfig, run, argv, distributed=True)


if __name__ == "__main__":
    raise SystemExit(main())
