"""Critic step and full GAN iteration: ours against fastai's gan_critic and DynamicUnet.

Both sides are driven by the same code: our losses (``critic_loss`` BCE on the patch logits,
``generator_adv_loss`` + 50 x MSE content, the recipe's weights) and the loop mechanics of
``pipelines.train_gan`` (the network that serves as the loss frozen and in eval mode).

- critic step (the pretrain_critic stage): critic on ``batch`` real + ``batch`` generated HR
  crops, backward, optimizer; counted as 2 x batch images, as the stage does.
- GAN iteration: one critic step (generator forward without gradients + critic step) and one
  generator step (generator forward, frozen critic, adversarial + content loss, backward,
  optimizer): ``batch`` generator images per iteration, the train_gan stage's img/s at one
  critic step per generator step.

Recipe settings on both sides: resnet34 U-Net (blur, self-attention, weight norm), critic
nf 128 / 3 blocks / p 0.15, Adam betas (0, 0.99), wd 1e-3, critic lr x 5. fastai's networks use
fastai's Adam (its Learner's default); ours fused AdamW (the pipeline's).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import Report, clock, fmt, interleave, rates, ratios, repeats, summary
from bench.generator import (
    DEFAULT_ARCH,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPE_ARCH,
    SCALE,
    batch,
    sizes,
)
from bench.peers import FASTAI_MISSING, fastai_adam, fastai_available, fastai_critic, fastai_unet
from pipelines.networks import build_critic, build_generator
from pipelines.scoring.losses import PixelLoss
from pipelines.training.gan import Gan
from pipelines.training.loop import adamw

NAME = "gan"
TITLE = "Critic step and GAN iteration (images/s)"
RECIPE_CRITIC = dict(nf=128, n_blocks=3, p=0.15, self_attention=True)
DEFAULT_CRITIC = dict(nf=32, n_blocks=3, p=0.15, self_attention=True)  # params.yaml
LR, BETAS, WD, CRITIC_MULT, CONTENT_WEIGHT = 1e-4, (0.0, 0.99), 1e-3, 5.0, 50.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass  # shares --crop, --batch and --steps with the generator benchmark


class Bench:
    """A generator, a critic, their optimizers and a fixed batch, stepped by the pipeline's own
    ``Gan``. ``x`` is what the generator takes (fastai: the LR batch upsampled to the HR size
    and normalised) and ``real`` the targets as the critic takes them."""

    def __init__(self, gen, critic, fastai: bool, crop: int, n: int):
        if fastai:
            opt_g = fastai_adam(gen.parameters(), LR, BETAS, WD)
            opt_d = fastai_adam(critic.parameters(), LR * CRITIC_MULT, BETAS, WD)
        else:
            opt_g = adamw(gen.parameters(), lr=LR, betas=BETAS, weight_decay=WD)
            opt_d = adamw(critic.parameters(), lr=LR * CRITIC_MULT, betas=BETAS, weight_decay=WD)
        self.gan = Gan(gen, critic, opt_g, opt_d, PixelLoss("mse"), "bce", 1.0, CONTENT_WEIGHT)
        lr, hr = batch(crop, n)
        if fastai:
            up = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)
            self.x = (up - IMAGENET_MEAN) / IMAGENET_STD
            self.real = (hr - IMAGENET_MEAN) / IMAGENET_STD  # the recipe normalises targets too
        else:
            self.x, self.real = lr, hr
        self.fake = self.gan.fakes(self.x).as_subclass(torch.Tensor)
        gen.train()

    def critic_step(self) -> None:
        self.gan.critic_step(self.real, self.fake)

    def iteration(self) -> None:
        self.gan.critic_step(self.real, self.gan.fakes(self.x))
        self.gan.generator_step(self.x, self.real)


def run(args: argparse.Namespace) -> Report:
    crop, n, steps = sizes(args)
    n_rounds = repeats(args, 3, 2)
    report = Report(
        NAME,
        TITLE,
        {
            "crop": crop,
            "batch": n,
            "steps": steps,
            "rounds": n_rounds,
            "generator": RECIPE_ARCH,
            "critic": RECIPE_CRITIC,
            "default_generator": DEFAULT_ARCH,
            "default_critic": DEFAULT_CRITIC,
        },
    )
    torch.manual_seed(0)
    gans: dict[str, Bench] = {}
    if fastai_available():
        gans["fastai (recipe)"] = Bench(
            fastai_unet(crop),
            fastai_critic(**{k: v for k, v in RECIPE_CRITIC.items() if k != "self_attention"}),
            True,
            crop,
            n,
        )
    else:
        report.note(FASTAI_MISSING)
    gans["ours, recipe settings"] = Bench(
        build_generator(**RECIPE_ARCH), build_critic(**RECIPE_CRITIC), False, crop, n
    )
    gans["ours, params.yaml (resnet18, critic nf 32)"] = Bench(
        build_generator(**DEFAULT_ARCH), build_critic(**DEFAULT_CRITIC), False, crop, n
    )
    gan_res = interleave(
        {k: clock(g.iteration, steps) for k, g in gans.items()}, n_rounds, progress="GAN iterations"
    )
    # an iteration holds a critic step: the warm-up above serves both
    critic_res = interleave(
        {k: clock(g.critic_step, steps) for k, g in gans.items()},
        n_rounds,
        warmup=0,
        progress="critic steps",
    )
    critic_rate = {k: rates(v, 2 * n * steps) for k, v in critic_res.items()}
    gan_rate = {k: rates(v, n * steps) for k, v in gan_res.items()}
    ref = "fastai (recipe)" if "fastai (recipe)" in gans else "ours, recipe settings"
    rows = []
    for k in gans:
        rows.append(
            [
                k,
                fmt(critic_rate[k]),
                fmt(ratios(critic_rate[k], critic_rate[ref]), 2) + "x",
                fmt(gan_rate[k]),
                fmt(ratios(gan_rate[k], gan_rate[ref]), 2) + "x",
            ]
        )
    report.data["critic_images_per_s"] = {k: summary(v) for k, v in critic_rate.items()}
    report.data["gan_images_per_s"] = {k: summary(v) for k, v in gan_rate.items()}
    report.data["critic_vs_ref"] = {
        k: summary(ratios(critic_rate[k], critic_rate[ref])) for k in gans
    }
    report.data["gan_vs_ref"] = {k: summary(ratios(gan_rate[k], gan_rate[ref])) for k in gans}
    report.table(
        f"batch {n} x {crop} px HR, median [min-max] of {n_rounds} rounds x {steps}; "
        f"critic: 2 x {n} images per step; GAN: {n} generator images per iteration "
        "(1 critic + 1 generator step); ratios round by round against " + ref,
        ["variant", "critic img/s", f"vs {ref}", "GAN img/s", f"vs {ref}"],
        rows,
    )
    return report
