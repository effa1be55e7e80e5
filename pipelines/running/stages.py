"""The pipeline's stages, in the order dvc.yaml lists them (a test holds the two together), and
which of them want an accelerator: the flow tags those ``gpu`` so a concurrency limit shares one."""

from __future__ import annotations

STAGES = (
    "download",
    "crappify",
    "pretrain_generator",
    "pretrain_critic",
    "train_gan",
    "evaluate",
    "export",
)
ACCELERATED = frozenset({"pretrain_generator", "pretrain_critic", "train_gan", "evaluate"})
TRAINING = ("pretrain_generator", "pretrain_critic", "train_gan")
