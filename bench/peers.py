"""The implementations our code is compared with, written here from the recipe's description
(course-v3 lesson 7 crappify.py and superres-gan notebook; fastai for the networks).

- ``recipe_crappify``: the original crappify.py with PIL, line for line.
- ``PilPairs``: what a plain torchvision/PIL training dataset doing the same job looks like
  (random crop, flips, lighting, PIL downscale, PIL text, PIL JPEG round trip).
- ``fastai_unet`` / ``fastai_critic``: fastai's DynamicUnet and gan_critic with the recipe's
  settings, when fastai is installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from pipelines.core.runtime import hash_seed

FASTAI_MISSING = (
    "fastai is not installed: the comparisons with fastai are skipped "
    "(install them with: pip install -e '.[bench]')"
)


# -- crappify --------------------------------------------------------------------------------------
def resize_to(img: Image.Image, targ_sz: int, use_min: bool = False) -> tuple[int, int]:
    """fastai v1 ``resize_to``: the size with the shorter (use_min) or longer side ``targ_sz``."""
    w, h = img.size
    min_sz = (min if use_min else max)(w, h)
    ratio = targ_sz / min_sz
    return int(w * ratio), int(h * ratio)


def recipe_crappify(src: Path, dest: Path, rng: random.Random) -> None:
    """course-v3 crappify.py: decode ``src``, degrade it, write the JPEG to ``dest``."""
    recipe_degrade(Image.open(src), rng, dest)


def recipe_degrade(img: Image.Image, rng: random.Random, dest: Any) -> None:
    """course-v3 crappify.py's degradation: shorter side to 96 px (PIL bilinear), the quality
    number as white text in PIL's default font at a random point of the top-left quadrant,
    JPEG at that quality into ``dest`` (a path or a file object). Only the random generator is
    ours (the original used the unseeded global one)."""
    targ_sz = resize_to(img, 96, use_min=True)
    img = img.resize(targ_sz, resample=Image.BILINEAR).convert("RGB")
    w, h = img.size
    q = rng.randint(10, 70)
    ImageDraw.Draw(img).text(
        (rng.randint(0, w // 2), rng.randint(0, h // 2)), str(q), fill=(255, 255, 255)
    )
    img.save(dest, format="JPEG", quality=q)


# -- data loading ----------------------------------------------------------------------------------
class PilPairs(Dataset):
    """Random (LR, HR) crops made fresh with torchvision transforms on PIL images: random crop,
    horizontal and vertical flips, brightness/contrast jitter on 3 samples in 4 (as ours),
    bilinear PIL downscale, the quality number in PIL's default font, PIL JPEG encode + decode.
    Decoded photos are kept per process, as our TrainPairs does."""

    def __init__(
        self,
        hr_files: Sequence[Path],
        crop: int,
        scale: int,
        seed: int,
        lighting: float = 0.1,
        quality: tuple[int, int] = (10, 70),
    ):
        self.hr_files, self.crop, self.scale, self.seed = list(hr_files), crop, scale, seed
        self.lighting, self.quality = lighting, quality
        self.cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.hr_files)

    def _image(self, k: int) -> Image.Image:
        img = self.cache.get(k)
        if img is None:
            with Image.open(self.hr_files[k]) as f:
                img = f.convert("RGB")
            self.cache[k] = img
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.v2 import functional as F

        rng = random.Random(hash_seed(self.seed, "pil", index))
        img = self._image(rng.randrange(len(self.hr_files)))
        c, s = self.crop, self.scale
        w, h = img.size
        hr = F.crop(img, rng.randint(0, h - c), rng.randint(0, w - c), c, c)
        if rng.random() < 0.5:
            hr = F.horizontal_flip(hr)
        if rng.random() < 0.5:
            hr = F.vertical_flip(hr)
        if self.lighting and rng.random() < 0.75:
            hr = F.adjust_brightness(hr, 1 + rng.uniform(-self.lighting, self.lighting))
            hr = F.adjust_contrast(hr, 1 + rng.uniform(-self.lighting, self.lighting))
        lr = hr.resize((c // s, c // s), resample=Image.BILINEAR)
        q = rng.randint(*self.quality)
        ImageDraw.Draw(lr).text(
            (rng.randint(0, c // s // 2), rng.randint(0, c // s // 2)), str(q), fill=(255, 255, 255)
        )
        buf = io.BytesIO()
        lr.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        lr = Image.open(buf).convert("RGB")
        return (
            F.to_dtype(F.pil_to_tensor(lr), torch.float32, scale=True),
            F.to_dtype(F.pil_to_tensor(hr), torch.float32, scale=True),
        )


# -- fastai networks -------------------------------------------------------------------------------
def fastai_available() -> bool:
    try:
        import fastai  # noqa: F401
    except ImportError:
        return False
    return True


def fastai_version() -> str | None:
    try:
        import fastai
    except ImportError:
        return None
    return fastai.__version__


def fastai_unet(size: int, encoder: str = "resnet34") -> torch.nn.Module:
    """The recipe's generator: unet_learner(arch=resnet34, blur=True, self_attention=True,
    norm_type=NormType.Weight, y_range=(-3, 3)) on ``size`` px images (the HR size: the
    recipe upsamples the LR input first); random encoder weights, as in our benchmarks."""
    import torchvision
    from fastai.layers import NormType
    from fastai.vision.learner import create_body
    from fastai.vision.models.unet import DynamicUnet

    body = create_body(getattr(torchvision.models, encoder)(weights=None), pretrained=False)
    return DynamicUnet(
        body,
        3,
        (size, size),
        blur=True,
        self_attention=True,
        y_range=(-3.0, 3.0),
        norm_type=NormType.Weight,
    )


def fastai_critic(nf: int = 128, n_blocks: int = 3, p: float = 0.15) -> torch.nn.Module:
    """fastai's gan_critic (the recipe's critic)."""
    from fastai.vision.gan import gan_critic

    return gan_critic(nf=nf, n_blocks=n_blocks, p=p)


def fastai_adam(params, lr: float, betas: tuple[float, float], wd: float):
    """fastai's own Adam with decoupled weight decay, as its Learner uses by default; exposes
    ``step()`` and ``zero_grad()`` like a torch optimizer."""
    from fastai.optimizer import Adam

    return _TorchLike(
        Adam(list(params), lr=lr, mom=betas[0], sqr_mom=betas[1], wd=wd, decouple_wd=True)
    )


class _TorchLike:
    """fastai's optimizer behind torch's ``zero_grad(set_to_none=...)`` call, so the pipeline's
    own step functions drive it; fastai zeroes gradients in place (its own behaviour)."""

    def __init__(self, opt):
        self.opt = opt

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad()

    def step(self) -> None:
        self.opt.step()
