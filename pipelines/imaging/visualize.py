"""Pictures for people: labelled side-by-side comparisons and score-per-step line plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from pipelines.core.files import atomic_path

GAP = 4  # px between cells, so neighbouring images read as separate
BACKGROUND = 255
TEXT_COLOUR = (0, 0, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _to_height(img: np.ndarray, height: int) -> np.ndarray:
    if img.shape[0] == height:
        return img
    width = max(1, round(img.shape[1] * height / img.shape[0]))
    # Nearest when enlarging keeps LR pixels visible as blocks; area when shrinking avoids aliasing.
    method = cv2.INTER_NEAREST if height > img.shape[0] else cv2.INTER_AREA
    return cv2.resize(img, (width, height), interpolation=method)


def _label_strip(text: str, width: int, height: int) -> np.ndarray:
    strip = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    scale, thickness = height / 40.0, max(1, round(height / 24))
    (tw, th), _ = cv2.getTextSize(text, FONT, scale, thickness)
    if tw > width - 4:  # shrink long labels to fit their column
        scale *= (width - 4) / tw
        (tw, th), _ = cv2.getTextSize(text, FONT, scale, thickness)
    origin = (max(2, (width - tw) // 2), (height + th) // 2)
    cv2.putText(strip, text, origin, FONT, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)
    return strip


def grid(
    rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str], height: int | None = None
) -> np.ndarray:
    """One RGB uint8 image: ``rows`` of images side by side under a header of column ``labels``.

    Images are resized to a common ``height`` (default: the tallest image), aspect kept; a column
    is as wide as its widest image, narrower ones are centred on the background.
    """
    if not rows:
        raise ValueError("grid needs at least one row")
    ncols = len(labels)
    if any(len(r) != ncols for r in rows):
        raise ValueError(f"every row needs {ncols} images, one per label")
    for img in (img for r in rows for img in r):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected RGB uint8 HxWx3 images, got {img.dtype} {img.shape}")
    height = height or max(img.shape[0] for r in rows for img in r)
    cells = [[_to_height(img, height) for img in r] for r in rows]
    widths = [max(cells[i][j].shape[1] for i in range(len(cells))) for j in range(ncols)]
    header = max(16, min(40, height // 8))

    total_w = sum(widths) + GAP * (ncols + 1)
    total_h = header + (height + GAP) * len(cells) + GAP
    out = np.full((total_h, total_w, 3), BACKGROUND, dtype=np.uint8)
    x = GAP
    for j, w in enumerate(widths):
        out[:header, x : x + w] = _label_strip(labels[j], w, header)
        for i, row in enumerate(cells):
            img = row[j]
            y = header + i * (height + GAP)
            dx = x + (w - img.shape[1]) // 2
            out[y : y + height, dx : dx + img.shape[1]] = img
        x += w + GAP
    return out


def line_plot(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: Path | str,
    title: str,
    xlabel: str = "step",
) -> Path:
    """A PNG of each series over ``xs``, one panel per series sharing the x axis (scores in dB
    and in [0, 1] would flatten each other on one axis); written atomically to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not series:
        raise ValueError("line_plot needs at least one series")
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(xs)} x values")
    # A bare Figure, not pyplot: no global state, no GUI backend, safe in worker threads.
    fig = Figure(figsize=(7, 1.2 + 1.6 * len(series)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, ys) in zip(axes, series.items()):
        ax.plot(list(xs), list(ys), marker="o", markersize=3)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
