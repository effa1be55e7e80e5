"""What every benchmark shares: interleaved repeats, median [min-max] statistics, tables, and a
JSON result file with the machine it was measured on.

The reference machine is shared with other work, so a single timing says little. Each
benchmark therefore runs its variants in rounds: one untimed warm-up of every variant, then
``repeats`` rounds that each run every variant once (the order rotated from round to round), so
a busy spell slows all variants of a round alike. Rates are reported as the median of the
rounds with their min and max, and a ratio between two variants is computed round by round
(side by side in time) before taking its median, never from two medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


# -- statistics ----------------------------------------------------------------------------------
def summary(values: Iterable[float]) -> dict[str, Any]:
    """median, min, max and the values themselves (rounded for the JSON file)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": [round(v, 6) for v in vals],
    }


def fmt(
    values: Iterable[float] | Mapping[str, Any] | None, digits: int = 1, suffix: str = ""
) -> str:
    """``median [min-max]``; a single value alone; ``-`` when there is none."""
    s = values if isinstance(values, Mapping) else summary(values if values is not None else [])
    if not s.get("n"):
        return "-"
    med = f"{s['median']:.{digits}f}{suffix}"
    if s["n"] == 1 or s["min"] == s["max"]:
        return med
    return f"{med} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def rates(seconds: Sequence[float], items: float) -> list[float]:
    """items per second of each round."""
    return [items / s for s in seconds]


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i], round by round: both measured in the same round."""
    return [x / y for x, y in zip(a, b)]


# -- timing --------------------------------------------------------------------------------------
def clock(fn: Callable[[], Any], times: int = 1) -> Callable[[], float]:
    """A variant for ``interleave`` that times ``times`` calls of ``fn`` with the wall clock."""

    def run() -> float:
        start = time.perf_counter()
        for _ in range(times):
            fn()
        return time.perf_counter() - start

    return run


def interleave(
    variants: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1, progress: str = ""
) -> dict[str, list[float]]:
    """Seconds of each variant in each of ``repeats`` rounds.

    A variant is a callable returning the seconds it measured (``clock`` wraps a plain one;
    a variant may time only its steady part, e.g. after a loader's start-up). Every variant
    runs ``warmup`` times untimed first; each round runs every variant once, in an order
    rotated by one per round.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(float(variants[name]()))
        if progress:
            print(f"  {progress}: round {r + 1}/{repeats}", file=sys.stderr, flush=True)
    return out


# -- the machine ---------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "amx")) or f == "fma")
    except OSError:
        pass
    return []


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, library versions and thread settings."""
    import cv2
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _mem_total_gb(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torchvision": _version("torchvision"),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "numpy": np.__version__,
        "pillow": _version("pillow"),
        "albumentations": _version("albumentations"),
        "fastai": _version("fastai"),
        "dvc": _version("dvc"),
        "prefect": _version("prefect"),
        "env": {
            k: os.environ[k]
            for k in (
                "OMP_WAIT_POLICY",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE",
            )
            if k in os.environ
        },
    }
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- the report ----------------------------------------------------------------------------------
class Report:
    """Tables printed as they are made, and everything written to bench/results/<name>.json."""

    def __init__(self, name: str, title: str, params: Mapping[str, Any]):
        self.name, self.title = name, title
        self.params = dict(params)
        self.data: dict[str, Any] = {}
        self.tables: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.machine = machine_info()
        self.load_start = load_average()
        self.started = time.time()
        print(f"\n== {title} ==", flush=True)
        print(
            f"   {self.machine['cpu_model']}, {self.machine['usable_cpus']} cores, torch "
            f"{self.machine['torch']} ({self.machine['torch_threads']} threads), load average "
            f"{self.load_start}",
            flush=True,
        )

    def table(
        self,
        title: str,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        note: str | None = None,
    ) -> None:
        rows = [[str(c) for c in r] for r in rows]
        self.tables.append({"title": title, "headers": list(headers), "rows": rows, "note": note})
        print(f"\n{title}")
        print(markdown_table(headers, rows))
        if note:
            print(note)
        sys.stdout.flush()

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        doc = {
            "name": self.name,
            "title": self.title,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "params": self.params,
            "machine": {
                **self.machine,
                "load_average_start": self.load_start,
                "load_average_end": load_average(),
            },
            "data": self.data,
            "tables": self.tables,
            "notes": self.notes,
        }
        path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
        print(f"\n-> {path.relative_to(ROOT)} ({doc['seconds']} s)", flush=True)
        return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
        for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


# -- command line --------------------------------------------------------------------------------
def base_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmarks of the decrappify pipeline; results in bench/results/<name>.json.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes and fewer rounds: a check that everything runs",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="timed rounds per measurement (default: per benchmark, fewer with --quick)",
    )
    return p


def repeats(args: argparse.Namespace, default: int, quick: int = 2) -> int:
    if args.repeats is not None:
        return max(1, args.repeats)
    return quick if args.quick else default


def sample_images(min_side: int = 0) -> list[Path]:
    """The project's HR photos (data/hr, the download stage's output) if present, else the
    scikit-image sample photos converted once to RGB PNGs in a cache folder."""
    from pipelines.imaging.images import list_images

    hr = ROOT / "data" / "hr"
    files = list_images(hr) if hr.is_dir() else []
    if not files:
        files = _skimage_photos()
    if min_side:
        import cv2

        keep = []
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if img is not None and min(img.shape[:2]) >= min_side:
                keep.append(f)
        files = keep
    return files


def _skimage_photos() -> list[Path]:
    import numpy as np
    from PIL import Image

    from pipelines.datasets.photos import SAMPLE_PHOTOS, sample_folder

    out = RESULTS / "sample_photos"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in SAMPLE_PHOTOS:
        src = sample_folder() / name
        if not src.exists():
            continue
        dest = out / (Path(name).stem + ".png")
        if not dest.exists():
            with Image.open(src) as img:
                rgb = np.asarray(img.convert("RGB"))
            Image.fromarray(rgb).save(dest)
        files.append(dest)
    if not files:
        raise FileNotFoundError("no sample photos: run the download stage or install scikit-image")
    return files
