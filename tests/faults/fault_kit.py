"""Shared pieces of the fault suite (tests/faults/).

- ``make_mixed_folder``: a scraped-looking folder of good photos and every bad kind of file,
  with the outcome the download stage must report for each;
- ``make_workspace``: a scratch git + DVC repository holding a copy of the real stage code,
  the real dvc.yaml and tiny params, so ``dvc repro`` runs the real stages end to end;
- helpers to run DVC and stages as process groups, kill them, and compare outputs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

from pipeline_repo import dvc_cli, make_pipeline_repo, tiny_params

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Set by the session fixture ``fault_store``: the MLflow store every stage of the suite logs to
# (one store: creating a new one costs seconds).
settings: dict[str, str] = {"tracking_uri": ""}


def _permission_drop() -> list[str]:
    """A command prefix under which root obeys file permission bits, or [] where impossible.

    Root ignores permission bits through the DAC override capabilities; without them (a
    process of uid 0 whose capability bounding set lacks them) a mode-000 file is unreadable,
    as it is for any user. The pipeline runs under this prefix so that the "unreadable
    permissions" case is the kernel's, not a mock.
    """
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return []
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f".fault-probe-{os.getpid()}"
    probe.write_text("x")
    probe.chmod(0)
    try:
        ok = subprocess.run([*cmd, "cat", str(probe)], capture_output=True).returncode != 0
    except OSError:
        ok = False
    finally:
        probe.unlink()
    return cmd if ok else []


PERMISSION_DROP = _permission_drop()
PERMISSIONS_ENFORCED = os.geteuid() != 0 or bool(PERMISSION_DROP)

# The suite's tiny settings (tests/pipeline_repo.py) on a folder of small photos; the training
# stages take a few more steps, so that a kill at a random step finds each of them mid-run.
TRAIN_STEPS = {"pretrain_generator": 8, "pretrain_critic": 24, "train_gan": 8}


def fault_params(folder: Path | str) -> dict:
    return tiny_params(
        {
            "base": {"seed": 11},
            "download": {"source": "folder", "folder": str(folder), "max_images": 0},
            "pretrain_generator": {
                "phases": [
                    {"steps": 4, "batch_size": 2, "lr": 0.001},
                    {"steps": 4, "batch_size": 2, "lr": 0.001, "crop": 48},
                ],
                "eval_every": 4,
                "checkpoint_every": 2,
                "log_every": 2,
                "sample_every": 0,
            },
            "pretrain_critic": {"steps": 24, "checkpoint_every": 3, "log_every": 3, "tile": 64},
            "train_gan": {"steps": 8, "log_every": 2},
            "evaluate": {"max_images": 0, "tile": 64, "overlap": 8},
        }
    )


# -- the mixed folder --------------------------------------------------------------------------
def _photo(index: int, h: int, w: int) -> np.ndarray:
    """An RGB crop of a real photograph (scikit-image's samples), ``h`` x ``w`` px."""
    from skimage import data

    sources = [
        data.astronaut,
        data.coffee,
        data.chelsea,
        data.rocket,
        data.hubble_deep_field,
        data.immunohistochemistry,
        data.retina,
    ]
    img = sources[index % len(sources)]()
    # from the middle third (the retina photo has black corners), shifted per index
    top = img.shape[0] // 3 + (index * 29) % max(1, img.shape[0] // 3 - 2 * h)
    left = img.shape[1] // 3 + (index * 17) % max(1, img.shape[1] // 3 - 2 * w)
    crop = img[top : top + 2 * h, left : left + 2 * w]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _jpeg(rgb: np.ndarray, quality: int = 92, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


NON_UTF8 = b"caf\xe9-latin1.jpg"  # a Latin-1 name, as old Windows zips and cameras write them
# the name it gets in data/hr: each byte that is not UTF-8 as %XX
NON_UTF8_SHOWN = "caf%E9-latin1.jpg"
SMALL = "small_40x44.png"


def make_mixed_folder(root: Path, good: int = 9) -> dict:
    """Write the folder; return {"accepted": {name: note}, "skipped": {name: reason}}.

    Names are as the download stage reports them (relative to ``root``).
    """
    root.mkdir(parents=True, exist_ok=True)
    accepted: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for i in range(good):
        h, w = 64 + 8 * (i % 3), 72 + 8 * (i % 4)
        rgb = _photo(i, h, w)
        if i % 2:
            (root / f"good_{i}.jpg").write_bytes(_jpeg(rgb))
            accepted[f"good_{i}.jpg"] = "ok"
        else:
            cv2.imwrite(str(root / f"good_{i}.png"), _bgr(rgb))
            accepted[f"good_{i}.png"] = "ok"
    # good pictures that need converting
    deep = _photo(20, 64, 80).astype(np.uint16) * 257
    cv2.imwrite(str(root / "sixteen_bit.png"), _bgr(deep.astype(np.uint16)))
    accepted["sixteen_bit.png"] = "converted: 16-bit"
    (root / "cmyk.jpg").write_bytes(_cmyk_jpeg(_photo(21, 64, 72)))
    accepted["cmyk.jpg"] = "converted: CMYK"
    pal = Image.fromarray(_photo(22, 64, 64)).quantize(64)
    pal.info["transparency"] = 0
    (root / "palette_alpha.png").write_bytes(_palette_png(pal))
    accepted["palette_alpha.png"] = "converted: alpha composited on white"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    (root / "exif_rotated.jpg").write_bytes(_jpeg(_photo(23, 64, 88), exif=exif.tobytes()))
    accepted["exif_rotated.jpg"] = "converted: EXIF orientation 6"
    # large enough for base.crop (32) but not for the 48 px crop of pretrain_generator's phase 2
    cv2.imwrite(str(root / SMALL), _bgr(_photo(28, 40, 44)))
    accepted[SMALL] = "ok"
    with open(os.path.join(os.fsencode(root), NON_UTF8), "wb") as f:
        f.write(_jpeg(_photo(24, 64, 72)))
    accepted[NON_UTF8_SHOWN] = "ok"

    # bad files
    (root / "zero_bytes.jpg").write_bytes(b"")
    skipped["zero_bytes.jpg"] = "empty file"
    full = _jpeg(_photo(25, 64, 64))
    (root / "truncated.jpg").write_bytes(full[: len(full) * 2 // 3])
    skipped["truncated.jpg"] = "truncated"
    png = cv2.imencode(".png", _bgr(_photo(26, 64, 64)))[1].tobytes()
    (root / "truncated.png").write_bytes(png[: len(png) * 2 // 3])
    skipped["truncated.png"] = "truncated"
    (root / "notes.jpg").write_text("this is a text file with an image's name\n")
    skipped["notes.jpg"] = "not an image"
    cv2.imwrite(str(root / "one_pixel.png"), np.zeros((1, 1, 3), np.uint8))
    skipped["one_pixel.png"] = "too small: 1x1 < 32"
    (root / "bomb.png").write_bytes(_bomb_png(20000, 20000))
    skipped["bomb.png"] = f"too large: over {2 * Image.MAX_IMAGE_PIXELS} pixels"
    # Unreadable entries that stay unreadable for root, who ignores permission bits.
    (root / "dangling.jpg").symlink_to(root / "gone" / "nowhere.jpg")
    skipped["dangling.jpg"] = "unreadable: No such file or directory"
    (root / "loop.png").symlink_to("loop.png")
    skipped["loop.png"] = "unreadable: Too many levels of symbolic links"
    os.mkfifo(root / "pipe.jpg")
    skipped["pipe.jpg"] = "unreadable: not a regular file"
    # Mode 000: unreadable, also to the pipeline running as root under PERMISSION_DROP.
    locked = root / "locked.jpg"
    locked.write_bytes(_jpeg(_photo(27, 64, 64)))
    locked.chmod(0)
    if PERMISSIONS_ENFORCED:
        skipped["locked.jpg"] = "unreadable: Permission denied"
    else:  # root with every capability reads it: a good photo then
        accepted["locked.jpg"] = "ok"
    return {"accepted": accepted, "skipped": skipped}


def _cmyk_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _palette_png(pal: Image.Image) -> bytes:
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    return buf.getvalue()


# -- scratch DVC workspaces ----------------------------------------------------------------------
def make_workspace(path: Path, params: dict) -> Path:
    """A committed git + DVC repository with the real stage code, dvc.yaml and ``params``."""
    return make_pipeline_repo(path, params, env=environment(), prefix=PERMISSION_DROP)


def copy_workspace(src: Path, dst: Path) -> Path:
    """A copy of workspace ``src`` to run a fault case in, without its MLflow artifacts.

    DVC's cache objects are hard links: DVC writes each object once (to a temporary, then a
    rename) and never in place, so the copies can share them; every other file is copied.
    A workspace holds hundreds of MB of models and checkpoints, and the suite makes a dozen.
    """

    def link_cache_objects(source: str, target: str) -> None:
        if f"{os.sep}.dvc{os.sep}cache{os.sep}" in source:
            os.link(source, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(
        src,
        dst,
        symlinks=True,
        ignore=shutil.ignore_patterns("mlruns"),
        copy_function=link_cache_objects,
    )
    return dst


def copy_stage_files(src: Path, dst: Path) -> Path:
    """The code, inputs and outputs of the stages in workspace ``src`` (not git, DVC's cache or
    checkpoints), to run stages in ``dst`` directly."""
    for part in ("pipelines", "data", "models", "metrics", "plots", "params.yaml", "dvc.yaml"):
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, symlinks=True)
        elif (src / part).exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dst / part)
    return dst


GAN_OUTPUTS = (
    "models/gan_generator.pt",
    "checkpoints/train_gan",
    "metrics/train_gan.json",
    "plots/gan_scores.csv",
    "plots/gan_chosen.csv",
    "plots/train_gan_loss.csv",
)


def forget_stage(ws: Path, stage: str = "train_gan", outputs=GAN_OUTPUTS) -> None:
    """Delete ``outputs`` (default: train_gan's), the stage's dvc.lock entry and DVC's
    run-cache, so that ``dvc repro`` has to run the stage again rather than restore it."""
    shutil.rmtree(ws / ".dvc/cache/runs", ignore_errors=True)
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    del lock["stages"][stage]
    (ws / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    for out in outputs:
        path = ws / out
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def environment(**extra: str) -> dict[str, str]:
    """The environment of the suite's DVC commands and stages: this interpreter's bin first on
    PATH (stage commands say ``python``), the suite's MLflow store, and one math thread per
    process: several processes of the suite may share the CPU, and OpenMP threads that wait
    for a busy core slow a step down tenfold."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    if settings["tracking_uri"]:
        env["MLFLOW_TRACKING_URI"] = settings["tracking_uri"]
    for name in ("DECRAPPIFY_ROOT", "DECRAPPIFY_PARENT_RUN_ID", "DECRAPPIFY_EXPERIMENT"):
        env.pop(name, None)
    env.update(extra)
    return env


def dvc_command(*args: str) -> list[str]:
    return [*PERMISSION_DROP, sys.executable, "-m", "dvc", *args]


def dvc(
    path: Path, *args: str, env: dict | None = None, timeout: float = 900, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a DVC command in ``path`` as the suite runs the pipeline (stderr merged into stdout)."""
    return dvc_cli(
        path, *args, env=env or environment(), prefix=PERMISSION_DROP, timeout=timeout, check=check
    )


def stage_command(stage: str, *args: str) -> list[str]:
    return [*PERMISSION_DROP, sys.executable, "-m", f"pipelines.{stage}", *args]


def run_stage(
    path: Path, stage: str, *args: str, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a stage's command in workspace ``path`` as DVC would, without DVC."""
    return subprocess.run(
        stage_command(stage, *args),
        cwd=path,
        env=env or environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def start(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, output to ``log``."""
    out = open(log, "ab")
    try:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env or environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (DVC, its shell and the stage) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


_steps: dict[Path, tuple[tuple[int, int], int]] = {}


def checkpoint_step(path: Path) -> int:
    """The step of the rolling checkpoint at ``path``; -1 while there is none.

    Read again only when the file changed: a checkpoint holds the optimizer state too.
    """
    from pipelines.training import checkpoint

    try:
        st = path.stat()
    except OSError:
        return -1
    key = (st.st_mtime_ns, st.st_size)
    cached = _steps.get(path)
    if cached and cached[0] == key:
        return cached[1]
    try:
        step = int(checkpoint.load(path, kind="training_state")["step"])
    except Exception:
        return -1
    _steps[path] = (key, step)
    return step


def wait_for(
    predicate: Callable[[], bool],
    proc: subprocess.Popen | None,
    timeout: float,
    what: str,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"process ended (code {proc.returncode}) before {what}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stop_when(
    predicate: Callable[[], bool],
    proc: subprocess.Popen,
    timeout: float,
    what: str,
    log: Path | None = None,
    slice_s: float = 0.02,
) -> None:
    """Run ``proc``'s process group in slices of ``slice_s`` seconds and return with it stopped
    (SIGSTOP) at the first pause where ``predicate`` holds: wherever the process then was.

    Polling a running stage can miss a point entirely: the tiny stages take milliseconds a step,
    and on a loaded machine the poller sleeps longer than the rest of the run."""
    deadline = time.monotonic() + timeout
    while True:
        os.killpg(proc.pid, signal.SIGSTOP)
        if predicate():
            return
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"process ended (code {proc.returncode}) before {what}:\n{text}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGCONT)
            raise AssertionError(f"timed out waiting for {what}")
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(slice_s)


# -- comparing outputs -------------------------------------------------------------------------
MODEL_FILES = ("models/generator.pt", "models/critic.pt", "models/gan_generator.pt")
# metrics that measure time, not results
TIMING_KEYS = {"seconds", "images_per_s", "train_images_per_s", "processed", "reused"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    from pipelines.training import checkpoint

    return checkpoint.load(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), (a, b)
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{a} and {b} differ in {different[:5]}"


def metrics_without_timing(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in TIMING_KEYS}


def tree_digest(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative name -> bytes)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def stray_temporaries(folder: Path) -> list[str]:
    """Leftovers of interrupted atomic writes (``.name.XXXX.tmp``) below ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*.tmp"))
