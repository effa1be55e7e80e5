"""Restore image files with a trained generator: ``decrappify restore`` and the restoration flow.

Inputs are image files, folders (searched recursively, image suffixes only) and glob patterns
(``**`` recurses). Every input is checked as an untrusted file (``images.check_image``): a
missing, empty, non-image, truncated or corrupt one is reported with its reason and the others
go on. Files inside the output folder are never inputs, so a second run does not restore the
first run's results. Each image is written as ``<out>/<path below its input><suffix>.png``
(a file given by name: ``<out>/<stem><suffix>.png``), and with ``compare`` also as
``..._compare.png``: the input enlarged (nearest) beside the restoration.

Problems that stop everything (an output folder that cannot be written, a model that cannot be
loaded, bad tiling arguments) raise ``RestoreError`` before any image is read.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.core.errors import StageError
from pipelines.core.runtime import autocast_dtype, pick_device
from pipelines.exporting.metadata import ExportError
from pipelines.imaging.images import (
    IMAGE_SUFFIXES,
    check_image,
    is_gray,
    list_images,
    write_image,
)
from pipelines.imaging.visualize import grid
from pipelines.inference.restore import (
    Network,
    colorize_at,
    load_generator,
    network_task,
    restore,
)
from pipelines.networks.unet import MIN_SIZE
from pipelines.running.tracking import fail_fast, project_tracking_uri, repo_root

DEFAULT_MODEL = Path("models") / "gan_generator.pt"
MLFLOW_SCHEMES = ("models:/", "runs:/")
COMPARE_SUFFIX = "_compare"
# Longest side of each half of a comparison: two 16000 px wide halves would be a 1 GB image
# no viewer shows at full size, so large restorations are compared downscaled.
COMPARE_MAX_SIDE = 2048

Report = Callable[[str], None]


class RestoreError(StageError):
    """Nothing can be restored: the output folder, the model or the settings are unusable."""


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    comparison: Path | None = None


@dataclass(frozen=True)
class Settings:
    tile: int = 256  # LR px per tile
    overlap: int = 32  # LR px shared by neighbouring tiles
    device: str = "cpu"
    dtype: torch.dtype | None = None
    task: str = "restore"  # the model's
    render_size: int = 0  # a colorizer's: longest side colour is computed at; 0 = full size
    self_ensemble: bool = False  # every tile averaged over its 8 flips and turns


@dataclass(frozen=True)
class Outcome:
    source: str
    output: str | None = None
    error: str | None = None  # why the image was not restored
    seconds: float = 0.0
    size: tuple[int, int] | None = None  # restored width, height
    colour_input: bool = False  # a colour photo given to a colorizer


@dataclass
class Summary:
    restored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # input -> reason
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.restored) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"restored {len(self.restored)}, failed {len(self.failed)} in "
            f"{self.seconds:.1f} s ({self.images_per_s:.3g} images/s)"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 4)}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def restore_paths(
    inputs: Sequence[str],
    out: Path | str,
    model: str | None = None,
    *,
    compare: bool = False,
    tile: int = 256,
    overlap: int = 32,
    device: str = "auto",
    suffix: str = "_restored",
    task: str | None = None,
    render_size: int = 0,
    self_ensemble: bool = False,
    report: Report = _stderr,
    progress: Report | None = None,
    run_one: Callable[[Job, Network, Settings], Outcome] | None = None,
) -> Summary:
    """Restore every image ``inputs`` name into ``out``; see the module docstring.

    ``model``: a checkpoint file, an exported ``.onnx`` (run by ONNX Runtime) or
    ``.safetensors`` file, an MLflow model URI (``models:/<name>@<alias>``,
    ``runs:/<id>/<path>``) or None for the repository's ``models/gan_generator.pt``.
    ``report`` gets one line per bad input, ``progress`` one per restored image. ``run_one``
    restores one job (default ``restore_file``; the flow passes a task). Model loading is not
    counted in the summary's seconds. ``task`` (restore | colorize), when given, must be the
    model's. A colorizer takes gray or colour photos (colour ones from their luminance, said
    once) and with ``render_size`` computes colour at that longest side. ``self_ensemble``
    averages every tile over its 8 flips and quarter turns, at 8 times the time.
    """
    _check_settings(tile, overlap, suffix)
    if render_size < 0:
        raise RestoreError(f"--render-size {render_size}: must be 0 (full size) or more px")
    try:
        dev = pick_device(device)
    except RuntimeError as exc:
        raise RestoreError(f"--device {device}: {exc}") from None
    # The model first: when it cannot be loaded, not even the output folder is created.
    net = load_model(model, dev)
    have = network_task(net)
    if task is not None and task != have:
        raise RestoreError(
            f"{model or DEFAULT_MODEL}: a {have} model, but the task asked is {task}"
        )
    out = prepare_output(Path(out))
    settings = Settings(
        tile, overlap, str(dev), autocast_dtype(dev, "auto"), have, render_size, self_ensemble
    )
    jobs, failed = collect(inputs, out, suffix, compare)
    for source, reason in failed.items():
        report(f"{source}: {reason}")

    summary = Summary(failed=failed)
    run_one = run_one or restore_file
    start = time.perf_counter()
    told = False
    for job in jobs:
        result = run_one(job, net, settings)
        if result.colour_input and not told:
            told = True
            report(
                f"{result.source}: a colour photo; a colorizer colorizes it from its "
                "luminance (so are any other colour photos here)"
            )
        if result.error is not None:
            summary.failed[result.source] = result.error
            report(f"{result.source}: {result.error}")
        else:
            summary.restored.append(result.source)
            if progress is not None:
                w, h = result.size or (0, 0)
                progress(f"{result.source} -> {result.output} ({w}x{h}, {result.seconds:.1f} s)")
    summary.seconds = time.perf_counter() - start
    return summary


def _check_settings(tile: int, overlap: int, suffix: str) -> None:
    if tile < MIN_SIZE:
        raise RestoreError(f"--tile {tile}: below the generator's smallest input, {MIN_SIZE} px")
    if not 0 <= 2 * overlap <= tile:
        raise RestoreError(f"--overlap {overlap}: must be between 0 and half the tile ({tile})")
    if os.sep in suffix or (os.altsep and os.altsep in suffix):
        raise RestoreError(f"--suffix {suffix!r}: a suffix cannot contain a path separator")


def prepare_output(out: Path) -> Path:
    """Create ``out`` and prove that a file can be written there; RestoreError if not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RestoreError(f"{out}: output folder is an existing file") from None
    except NotADirectoryError:
        raise RestoreError(
            f"{out}: cannot create the output folder: part of its path is a file"
        ) from None
    except OSError as exc:
        raise RestoreError(
            f"{out}: cannot create the output folder: {exc.strerror or exc}"
        ) from None
    # Permissions, a read-only mount or a full disk show only when writing; better now than
    # after the first image has been restored.
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".decrappify-probe-"):
            pass
    except OSError as exc:
        raise RestoreError(f"{out}: output folder is not writable: {exc.strerror or exc}") from None
    return out


# -- the model ---------------------------------------------------------------------------------
def load_model(spec: str | None, device: torch.device) -> Network:
    """The generator named by ``spec`` (see ``restore_paths``), ready for ``restore``: a module
    in eval mode on ``device``, or for an ONNX file an ONNX Runtime tile runner (CPU)."""
    if spec and (spec.startswith(MLFLOW_SCHEMES) or "://" in spec):
        return _load_mlflow(spec, device)
    path = Path(spec) if spec else repo_root() / DEFAULT_MODEL
    if not path.is_file():
        what = "model file" if spec else "default model"
        raise RestoreError(
            f"{path}: {what} not found; train one with `dvc repro train_gan` "
            "(or pass --model PATH|models:/NAME@ALIAS)"
        )
    try:
        if path.suffix == ".onnx":
            from pipelines.exporting.onnx_file import OnnxRunner

            return OnnxRunner(path)
        if path.suffix == ".safetensors":
            from pipelines.exporting.safetensors_file import load_generator as load_weights

            return load_weights(path, device)
    except ExportError as exc:
        raise RestoreError(str(exc)) from None
    return load_generator(path, device)


def _load_mlflow(uri: str, device: torch.device) -> Network:
    """A registered or logged model: its ONNX graph (see ``Tracker.log_model``), run with
    ONNX Runtime. Models logged as pickles are refused: loading one could run any code."""
    fail_fast()
    import mlflow
    from mlflow.models import Model

    from pipelines.exporting.onnx_file import OnnxRunner

    store = project_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri))
        flavors = Model.load(str(local)).flavors
    except Exception as exc:  # MLflow raises its own, OSError or yaml errors, all told the same
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RestoreError(f"{uri}: cannot load the model from MLflow at {store}: {text}") from None
    if "onnx" not in flavors:
        raise RestoreError(
            f"{uri}: an MLflow model of flavour(s) {', '.join(flavors)}; expected "
            "the ONNX flavour that train_gan logs (older pickled models are not "
            "loaded: register a newly trained generator)"
        )
    try:
        return OnnxRunner(local / flavors["onnx"]["data"])
    except ExportError as exc:
        raise RestoreError(f"{uri}: {exc}") from None


# -- the inputs --------------------------------------------------------------------------------
def collect(
    inputs: Iterable[str], out: Path, suffix: str, compare: bool
) -> tuple[list[Job], dict[str, str]]:
    """The jobs for ``inputs`` and, per input that yields no image, the reason."""
    jobs: list[Job] = []
    failed: dict[str, str] = {}
    taken: dict[Path, Path] = {}  # output -> source, to refuse two sources for one output
    seen: set[Path] = set()
    out_abs = out.absolute()
    for item in inputs:
        found, reason = _expand(item)
        found = [(f, root) for f, root in found if out_abs not in f.absolute().parents]
        if reason is None and not found:
            reason = "no images outside the output folder"
        if reason is not None:
            failed[item] = reason
            continue
        for source, root in found:
            if source.absolute() in seen:
                continue
            seen.add(source.absolute())
            rel = Path(os.path.relpath(source.absolute(), root.absolute()))
            stem = out / rel.parent / (rel.stem + suffix)
            job = Job(
                source,
                stem.with_name(stem.name + ".png"),
                stem.with_name(stem.name + COMPARE_SUFFIX + ".png") if compare else None,
            )
            clash = next((taken[p] for p in (job.output, job.comparison) if p in taken), None)
            if clash is not None:
                failed[str(source)] = f"same output name as {clash}"
                continue
            taken.update({p: source for p in (job.output, job.comparison) if p is not None})
            jobs.append(job)
    return jobs, failed


def _expand(item: str) -> tuple[list[tuple[Path, Path]], str | None]:
    """(file, the folder its output path is relative to) for one input, or why there are none."""
    path = Path(item)
    if path.is_dir():
        files = list_images(path)
        return [(f, path) for f in files], None if files else "no images in this folder"
    if path.exists() or path.is_symlink():
        return [(path, path.parent)], None  # named explicitly: checked whatever its suffix
    if not glob.has_magic(item):
        return [], "no such file or folder"
    # Outputs keep the path below the pattern's fixed leading folders.
    parts = path.parts
    fixed = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    found = []
    for match in sorted(glob.glob(item, recursive=True)):
        m = Path(match)
        if m.is_dir():
            found += [(f, root) for f in list_images(m)]
        elif m.suffix.lower() in IMAGE_SUFFIXES and not m.name.startswith("."):
            found.append((m, root))
    return found, None if found else "no image file matches this pattern"


# -- one image ---------------------------------------------------------------------------------
def restore_file(job: Job, model: Network, settings: Settings) -> Outcome:
    """Check, restore and write one image; failures come back as ``Outcome.error``."""
    start = time.perf_counter()
    source = str(job.source)
    rgb, reason = check_image(job.source, min_size=MIN_SIZE)
    if rgb is None:
        return Outcome(source, error=reason)
    colorizing = settings.task == "colorize"
    how = (settings.tile, settings.overlap, settings.device, settings.dtype, settings.self_ensemble)
    try:
        if colorizing and settings.render_size:
            hr = colorize_at(model, rgb, settings.render_size, *how)
        else:
            hr = restore(model, rgb, *how)
        write_image(job.output, hr)
        if job.comparison is not None:
            write_image(job.comparison, comparison(rgb, hr))
    except (MemoryError, torch.cuda.OutOfMemoryError):
        return Outcome(
            source,
            error=f"out of memory at {rgb.shape[1]}x{rgb.shape[0]} px "
            "(a smaller --tile needs less)",
        )
    except OSError as exc:
        return Outcome(
            source, error=f"cannot write {exc.filename or job.output}: {exc.strerror or exc}"
        )
    except Exception as exc:  # one image's failure must not stop the others
        text = str(exc).splitlines()[0] if str(exc) else ""
        return Outcome(source, error=f"restore failed: {type(exc).__name__}: {text}")
    return Outcome(
        source,
        output=str(job.output),
        seconds=time.perf_counter() - start,
        size=(hr.shape[1], hr.shape[0]),
        colour_input=colorizing and not is_gray(rgb),
    )


def comparison(lr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """The input enlarged with nearest-neighbour beside its restoration, labelled."""
    height = hr.shape[0]
    longest = max(hr.shape[:2])
    if longest > COMPARE_MAX_SIDE:
        height = max(1, round(height * COMPARE_MAX_SIDE / longest))
    return grid([[lr, hr]], ["input (nearest)", "restored"], height=height)
