"""Paired LR/HR datasets, augmentation, and the step-indexed sampler that makes resume exact.

Every random choice for a training sample (which image, where to crop, which augmentation,
which degradation) is drawn from ``hash_seed(seed, stream, index)``, where ``index`` is the
sample's position in the whole run. So the data depends neither on worker count nor on where
a run was interrupted: resuming at step ``s`` reads exactly the batches an uninterrupted run
would have read, and under torchrun each rank takes its own slice of the same global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError
from pipelines.core.runtime import hash_seed
from pipelines.imaging.images import is_gray, list_images, read_rgb
from pipelines.imaging.resize import RESAMPLERS, benchmark_lr, imresize_matlab
from pipelines.imaging.tensors import centre_box, centre_crop, to_tensor
from pipelines.scoring.regions import watermark_mask_hr

log = logging.getLogger(__name__)

# how a validation or evaluation photo is degraded: crappify's LR, or the SR benchmark's
Kind = Literal["crappy", "clean"]
KINDS: tuple[Kind, ...] = ("crappy", "clean")


def check_kinds(key: str, kinds: Sequence[str]) -> None:
    """A params list of kinds (evaluate's data sets, train_gan's validation sets): one or more,
    each known and given once; else a ConfigError naming ``key``."""
    names = ", ".join(KINDS)
    if not kinds:
        raise ConfigError(f"{key}: give at least one of {names}")
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise ConfigError(f"{key}: {kind!r} is not one of {names}")
        if kind in kinds[:i]:
            raise ConfigError(f"{key}: {kind!r} is given twice; give each of {names} once at most")


# zoom [lo, hi] that keeps every photo at its own size, and draws nothing
NO_ZOOM = (1.0, 1.0)


def check_zoom(zoom: Sequence[float], data_mode: str) -> None:
    """``zoom`` shrinks each HR crop before it is degraded: [lo, hi] in (0, 1], and only for
    fresh degradations (the crappify stage's LR files are of the photos' own size)."""
    lo, hi = zoom
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"zoom: {list(zoom)!r} must be [lo, hi] with 0 < lo <= hi <= 1")
    if (lo, hi) != NO_ZOOM and data_mode != "fresh":
        raise ConfigError(f"zoom: {list(zoom)!r} needs data: fresh (here {data_mode})")


def check_text_window(window: int, focus: float) -> None:
    """``watermark_focus`` places crops in their text window: without a window it means nothing."""
    if focus and not window:
        raise ConfigError(
            f"watermark_focus: {focus} needs a text window (watermark_window is {window})"
        )


# degrade(hr_crop, rng, frame) -> lr: the LR image the generator learns to restore; frame is
# the LR crop's place in the whole LR image, (x, y, width, height): degradations.Frame; with
# TrainPairs.text_weight, (lr, the watermark's LR mask)
Degrader = Callable[[np.ndarray, np.random.Generator, tuple[int, int, int, int]], np.ndarray]


def lr_path_for(hr_file: Path, hr_root: Path, lr_root: Path) -> Path:
    """The crappify stage mirrors data/hr into data/lr with JPEG files."""
    return (lr_root / hr_file.relative_to(hr_root)).with_suffix(".jpg")


def split_files(root: Path | str, split: str) -> list[Path]:
    files = list_images(Path(root) / split)
    if not files:
        raise FileNotFoundError(f"{Path(root) / split}: no images (run the earlier stages first)")
    return files


def real_examples(files: Sequence[Path], task: str) -> list[Path]:
    """The photos a critic may take as real ones. A colorizer's gray training photos teach
    its pretraining that gray things stay gray; shown to a critic as real, they would teach
    it that gray output is real, and the GAN phase would wash the colour out."""
    if task != "colorize":
        return list(files)
    colour = [f for f in files if not is_gray(read_rgb(f))]
    if not colour:
        raise StageError(f"{Path(files[0]).parent}: no colour photo, and a critic needs real ones")
    if len(colour) < len(files):
        log.info("%d gray photos are not shown to the critic as real", len(files) - len(colour))
    return colour


def aligned_lr(lr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop HR to the region the LR image covers (top-left LRw*scale x LRh*scale); if the LR
    is not an exact 1/scale (a short-side crappify), resize it to HR // scale."""
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if lr.shape[:2] != (h, w):
        lr = cv2.resize(lr, (w, h), interpolation=cv2.INTER_AREA)
    return lr, hr[: h * scale, : w * scale]


def augmentation(lighting: float) -> A.Compose:
    """Geometric ops from the dihedral group commute with downscaling, so the same op applied
    to an LR and its HR keeps them aligned; lighting changes are pixel-wise and identical."""
    ops: list = [A.HorizontalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    if lighting > 0:
        ops.append(
            A.RandomBrightnessContrast(brightness_limit=lighting, contrast_limit=lighting, p=0.75)
        )
    return A.Compose(ops, additional_targets={"lr": "image"}, is_check_shapes=False)


class _ImageCache:
    """Decoded images kept per process (picklable for DataLoader workers): the same photos
    are cropped many times. Bounded by pixel count so a large dataset cannot exhaust RAM."""

    def __init__(self, max_pixels: int = 200_000_000):
        self.max_pixels = max_pixels
        self.images: dict[Path, np.ndarray] = {}
        self.pixels = 0

    def read(self, path: Path) -> np.ndarray:
        img = self.images.get(path)
        if img is None:
            img = read_rgb(path)
            if self.pixels + img.shape[0] * img.shape[1] <= self.max_pixels:
                self.images[path] = img
                self.pixels += img.shape[0] * img.shape[1]
        return img


def fitting(files: Sequence[Path], crop: int) -> list[int]:
    """Indices of the ``files`` that a ``crop`` px square fits in (sizes read from headers).

    An image smaller than the crop (a later phase, or the critic, may crop larger than the
    download stage's minimum, base.crop) is left out and named in a warning, not fatal.
    """
    keep, small = [], []
    for i, f in enumerate(files):
        with Image.open(f) as img:
            if min(img.size) < crop:
                small.append(f"{f.name} ({img.size[0]}x{img.size[1]})")
            else:
                keep.append(i)
    if not keep:
        raise StageError(
            f"none of the {len(files)} training images is at least {crop} px on "
            "both sides: lower the crop or add larger images"
        )
    if small:
        log.warning(
            "%d of %d training images are smaller than the %d px crop and are left out: %s",
            len(small),
            len(files),
            crop,
            ", ".join(small),
        )
    return keep


# kernels of the clean (only downscaled) training inputs: OpenCV's, and MATLAB's antialiased
# bicubic (imresize), which the super-resolution benchmarks' LR images are made with
CLEAN_RESAMPLE = ("area", "bilinear", "bicubic", "lanczos", "matlab_bicubic")


def shrink(hr: np.ndarray, size: int, kernel: str) -> np.ndarray:
    """A square HR crop shrunk to ``size`` px by ``kernel`` (one of CLEAN_RESAMPLE)."""
    if kernel == "matlab_bicubic":
        return imresize_matlab(hr, (size, size))
    return cv2.resize(hr, (size, size), interpolation=RESAMPLERS[kernel])


class TrainPairs(Dataset):
    """Random aligned (LR, HR) crops. ``degrade`` given: LR made fresh from each HR crop
    (a new degradation for every sample); else LR cropped from the crappify stage's files."""

    def __init__(
        self,
        hr_files: Sequence[Path],
        crop: int,
        scale: int,
        seed: int,
        degrade: Degrader | None = None,
        lr_files: Sequence[Path] | None = None,
        augment: bool = True,
        lighting: float = 0.1,
        clean_prob: float = 0.0,
        clean_resample: Sequence[str] = ("area",),
        watermark_window: int = 0,
        watermark_focus: float = 0.0,
        zoom: tuple[float, float] = NO_ZOOM,
        text_weight: float = 0.0,
    ):
        if degrade is None and lr_files is None:
            raise ValueError("TrainPairs needs either degrade or lr_files")
        hr_files, lr_files = list(hr_files), (list(lr_files) if lr_files else None)
        keep = fitting(hr_files, crop)
        self.hr_files = [hr_files[i] for i in keep]
        self.lr_files = [lr_files[i] for i in keep] if lr_files else None
        self.crop, self.scale, self.seed = crop, scale, seed
        self.degrade = degrade
        # share of fresh samples that are only downscaled: a restorer must not damage clean input
        self.clean_prob = clean_prob
        # ...by one of these kernels, drawn per crop: a model trained blind over several is no
        # stranger to a photo shrunk by any of them (benchmarks use MATLAB's bicubic)
        unknown = [k for k in clean_resample if k not in CLEAN_RESAMPLE]
        if not clean_resample or unknown:
            raise ValueError(
                f"clean_resample: {list(clean_resample)!r} must be a non-empty list "
                f"of {', '.join(CLEAN_RESAMPLE)}"
            )
        self.clean_resample = tuple(clean_resample)
        # LR px; 0 = each crop's text is sized and placed on its whole photo
        self.watermark_window = watermark_window
        # share of windowed crops placed where their window's text is drawn
        self.watermark_focus = watermark_focus
        check_zoom(zoom, "fresh" if degrade is not None else "fixed")
        self.zoom = tuple(zoom)
        # > 0: samples carry a third tensor, the loss's pixel weights: 1, plus this inside the
        # watermark's mask (``degrade`` then returns the LR image and the mask)
        self.text_weight = text_weight
        self.aug = augmentation(lighting) if augment else None
        self.cache = _ImageCache()

    def __len__(self) -> int:
        return len(self.hr_files)

    def image_index(self, index: int) -> int:
        """A fresh seeded permutation of the images per pass: every image once per pass."""
        n = len(self.hr_files)
        epoch, pos = divmod(index, n)
        perm = np.random.default_rng(hash_seed(self.seed, "perm", epoch)).permutation(n)
        return int(perm[pos])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng(hash_seed(self.seed, "sample", index))
        k = self.image_index(index)
        hr = self.cache.read(self.hr_files[k])
        lr = None
        if self.lr_files is not None and self.degrade is None:
            lr, hr = aligned_lr(self.cache.read(self.lr_files[k]), hr, self.scale)
        hr_crop, lr_crop, (y, x), shape = self._crop(hr, lr, rng)
        if self.aug is not None:
            self.aug.set_random_seed(int(rng.integers(2**31)))
            out = self.aug(image=hr_crop, lr=lr_crop if lr_crop is not None else hr_crop[:1, :1])
            hr_crop = out["image"]
            lr_crop = out["lr"] if lr_crop is not None else None
        mask = None
        if lr_crop is None:
            if rng.random() < self.clean_prob:
                # one kernel draws nothing, so the default stream is the same as before kernels
                kernel = (
                    self.clean_resample[int(rng.integers(len(self.clean_resample)))]
                    if len(self.clean_resample) > 1
                    else self.clean_resample[0]
                )
                lr_crop = shrink(hr_crop, self.crop // self.scale, kernel)
            else:
                # the frame of the crop before its flip or turn: the chance and size of the
                # watermark it sees are those of its place in that frame
                lr_crop = self.degrade(hr_crop, rng, self._text_frame(x, y, shape, rng))
                if self.text_weight:
                    lr_crop, mask = lr_crop
        if not self.text_weight:
            return to_tensor(lr_crop), to_tensor(hr_crop)
        weights = np.ones(hr_crop.shape[:2], np.float32)
        if mask is not None and mask.any():
            weights[watermark_mask_hr(mask, hr_crop.shape, self.scale)] += self.text_weight
        return to_tensor(lr_crop), to_tensor(hr_crop), torch.from_numpy(weights)[None]

    def _text_frame(
        self, x: int, y: int, shape: tuple[int, ...], rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """The LR crop at HR (x, y) inside the window of its photo that its text is drawn on.

        Text is sized to a photo's shorter side, so a model trained on large photos would see
        only text taller than a small photo's. With ``watermark_window``, the window's shorter
        side is log-uniform from that many LR px (at least the crop) to the photo's, the
        window has the photo's aspect, and it is placed at random around the crop: text comes
        at the sizes, and as often, as on photos of all those sizes.

        A crop lies on text rarely (about one crappy crop in six on Sun80's photos), yet inside
        a photo's text is where a crappy photo loses the most. With ``watermark_focus``, that
        share of windowed crops is put where the text's corner is drawn, the window's top-left
        quadrant (``watermark_with_mask``). The window may then reach past the photo's edge: it
        only sizes and places the text, and the crop's pixels still come from inside the photo.
        Photos no larger than the window keep the whole-photo frame, focused or not. 0 draws no
        extra random numbers.
        """
        s, c = self.scale, self.crop // self.scale
        cx, cy, w, h = x // s, y // s, shape[1] // s, shape[0] // s
        lo = max(self.watermark_window, c)
        if not self.watermark_window or min(w, h) <= lo:
            return (cx, cy, w, h)
        f = (lo / min(w, h)) ** (1.0 - rng.random())  # window / photo, log-uniform
        ww, wh = max(c, round(w * f)), max(c, round(h * f))
        if self.watermark_focus and rng.random() < self.watermark_focus:
            ox = int(rng.integers(0, min(ww - c, ww // 2) + 1))
            oy = int(rng.integers(0, min(wh - c, wh // 2) + 1))
            return (ox, oy, ww, wh)
        wx = int(rng.integers(max(0, cx + c - ww), min(cx, w - ww) + 1))
        wy = int(rng.integers(max(0, cy + c - wh), min(cy, h - wh) + 1))
        return (cx - wx, cy - wy, ww, wh)

    def _crop(self, hr: np.ndarray, lr: np.ndarray | None, rng: np.random.Generator):
        """A ``crop`` px square of the photo, shrunk first by the zoom drawn for it, and its
        place (y, x) in the photo of that size, whose (height, width) comes last."""
        s, c = self.scale, self.crop
        h, w = hr.shape[:2]
        if h < c or w < c:
            raise ValueError(f"image {h}x{w} is smaller than the crop {c}")
        if self.zoom != NO_ZOOM:
            return self._zoomed_crop(hr, rng)
        y = int(rng.integers(0, (h - c) // s + 1)) * s
        x = int(rng.integers(0, (w - c) // s + 1)) * s
        hr_crop = np.ascontiguousarray(hr[y : y + c, x : x + c])
        if lr is None:
            return hr_crop, None, (y, x), (h, w)
        lr_crop = np.ascontiguousarray(lr[y // s : (y + c) // s, x // s : (x + c) // s])
        return hr_crop, lr_crop, (y, x), (h, w)

    def _zoomed_crop(self, hr: np.ndarray, rng: np.random.Generator):
        """The photo as if shrunk by a factor log-uniform in ``zoom``, cropped: a square of
        ``crop / factor`` px (at most the photo's shorter side), area-shrunk to ``crop``.

        Photos larger than the benchmarks' (Sun80's are up to 1024 px, Set5's 228-512) carry
        less detail per pixel; shrunk, they teach the finer textures of smaller photos, and
        each photo gives crops at several scales (the multi-scale copies of Real-ESRGAN's
        training set, drawn per crop).
        """
        c, (h, w) = self.crop, hr.shape[:2]
        lo, hi = self.zoom
        side = min(h, w, round(c / (lo * (hi / lo) ** rng.random())))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        region = hr[y : y + side, x : x + side]
        hr_crop = region if side == c else cv2.resize(region, (c, c), interpolation=cv2.INTER_AREA)
        f = c / side
        zh, zw = round(h * f), round(w * f)
        # rounding half to even could put the place one px past the shrunk photo's edge
        place = (min(round(y * f), zh - c), min(round(x * f), zw - c))
        return np.ascontiguousarray(hr_crop), None, place, (zh, zw)


class EvalPairs(Dataset):
    """Whole (or centre-cropped) LR/HR pairs of a split, in file order. ``kind`` "crappy": the
    crappify stage's LR files; "clean": the HR (crop) MATLAB-bicubic downscaled, the SR
    benchmark protocol, as the evaluate stage's clean data sets."""

    def __init__(
        self,
        hr_root: Path | str,
        lr_root: Path | str,
        split: str,
        scale: int,
        crop: int = 0,
        kind: Kind = "crappy",
    ):
        self.hr_root, self.lr_root = Path(hr_root), Path(lr_root)
        self.hr_files = split_files(self.hr_root, split)
        self.scale, self.crop, self.kind = scale, crop, kind

    def __len__(self) -> int:
        return len(self.hr_files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr_file = self.hr_files[i]
        if self.kind == "clean":
            lr, hr = benchmark_lr(centre_crop(read_rgb(hr_file), self.crop, self.scale), self.scale)
            return to_tensor(lr), to_tensor(hr)
        lr, hr = aligned_lr(
            read_rgb(lr_path_for(hr_file, self.hr_root, self.lr_root)),
            read_rgb(hr_file),
            self.scale,
        )
        if self.crop:
            lr, hr = center_crop_pair(lr, hr, self.crop, self.scale)
        return to_tensor(lr), to_tensor(hr)


def center_crop_pair(lr: np.ndarray, hr: np.ndarray, crop: int, scale: int):
    y, x, c = centre_box(hr.shape[0], hr.shape[1], crop, scale)
    return (
        lr[y // scale : (y + c) // scale, x // scale : (x + c) // scale],
        hr[y : y + c, x : x + c],
    )


class CriticPairs(Dataset):
    """Aligned random crops of a generated image and its real HR original: (fake, real)."""

    def __init__(
        self, real_files: Sequence[Path], fake_files: Sequence[Path], crop: int, seed: int
    ):
        real_files, fake_files = list(real_files), list(fake_files)
        keep = fitting(fake_files, crop)  # a batch stacks crops of one size
        self.real_files = [real_files[i] for i in keep]
        self.fake_files = [fake_files[i] for i in keep]
        self.crop, self.seed = crop, seed
        self.aug = augmentation(0.0)
        self.cache = _ImageCache()

    def __len__(self) -> int:
        return len(self.real_files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(hash_seed(self.seed, "critic", index))
        k = int(rng.integers(len(self.real_files)))
        fake = self.cache.read(self.fake_files[k])
        real = self.cache.read(self.real_files[k])[: fake.shape[0], : fake.shape[1]]
        c = min(self.crop, fake.shape[0], fake.shape[1])
        y = int(rng.integers(0, fake.shape[0] - c + 1))
        x = int(rng.integers(0, fake.shape[1] - c + 1))
        self.aug.set_random_seed(int(rng.integers(2**31)))
        out = self.aug(image=real[y : y + c, x : x + c], lr=fake[y : y + c, x : x + c])
        return to_tensor(out["lr"]), to_tensor(out["image"])


class StepBatches:
    """Batches of global sample indices for steps ``[start, stop)``; rank ``r`` of ``world``
    takes its contiguous share of each global batch."""

    def __init__(
        self, start: int, stop: int, batch_size: int, rank: int = 0, world: int = 1, offset: int = 0
    ):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.rank, self.world, self.offset = rank, world, offset

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world
        for step in range(self.start, self.stop):
            first = self.offset + step * self.batch_size + self.rank * per_rank
            yield list(range(first, first + per_rank))


def step_loader(
    dataset: Dataset,
    start: int,
    stop: int,
    batch_size: int,
    workers: int,
    rank: int = 0,
    world: int = 1,
    offset: int = 0,
) -> DataLoader:
    # A DataLoader draws a number from the torch RNG it is given each time it is iterated; from
    # the global one, that draw would shift the dropout masks of a resumed run (its loader starts
    # after the checkpoint's RNG state is restored) away from an uninterrupted run's. Samples do
    # not depend on it: their randomness comes from their index.
    return DataLoader(
        dataset,
        batch_sampler=StepBatches(start, stop, batch_size, rank, world, offset),
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
    )
