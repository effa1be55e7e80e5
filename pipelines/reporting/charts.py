"""Training curves as inline SVG, drawn from the plots/*.csv files the stages write.

One small chart per column (each metric has its own scale), the x axis the ``step`` column.
No plotting library: the page must open from disk without anything fetched, and an SVG of a
few hundred points is a few kilobytes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

X_COLUMN = "step"
WIDTH, HEIGHT = 360, 200
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 12, 26, 30
TICKS = 4


@dataclass(frozen=True)
class Curves:
    """The numeric columns of one CSV, over its ``step`` column."""

    name: str
    x: list[float]
    series: dict[str, list[float]]


def read_curves(path: Path | str) -> Curves | None:
    """The curves of one CSV; None when it has no ``step`` column or no rows."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or X_COLUMN not in rows[0]:
        return None
    x = [float(r[X_COLUMN]) for r in rows]
    series = {}
    for column in rows[0]:
        if column == X_COLUMN:
            continue
        try:
            series[column] = [
                float(r[column]) if r[column] not in ("", None) else math.nan for r in rows
            ]
        except ValueError:  # a text column: nothing to draw
            continue
    return Curves(path.stem, x, series)


def read_all(plots_dir: Path | str) -> list[Curves]:
    """Every CSV of ``plots_dir`` that has curves (two points at least: plots/gan_chosen.csv,
    the one candidate kept, is a marker for DVC's plots, drawn here on gan_scores), by name."""
    folder = Path(plots_dir)
    found = [read_curves(p) for p in sorted(folder.glob("*.csv"))] if folder.is_dir() else []
    return [c for c in found if c is not None and c.series and len(c.x) >= 2]


def _nice(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 0.01:
        return f"{value:.2e}"
    return f"{value:.4g}"


def line_chart(
    x: Sequence[float],
    y: Sequence[float],
    title: str,
    marker: float | None = None,
    marker_label: str = "",
) -> str:
    """An SVG line chart of ``y`` over ``x``; ``marker`` draws a labelled vertical line there."""
    points = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="chart-title">'
        f"{escape(title)}</text>",
    ]
    if not points:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no values</text>'
        )
        return "".join(parts) + "</svg>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = (
        min(xs + ([marker] if marker is not None else [])),
        max(xs + ([marker] if marker is not None else [])),
    )
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        span = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - span, y1 + span
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def px(v: float) -> float:
        return PAD_LEFT + (v - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        return PAD_TOP + (1 - (v - y0) / (y1 - y0)) * plot_h

    parts.append(
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" '
        'class="chart-frame"/>'
    )
    for i in range(TICKS + 1):
        yv = y0 + (y1 - y0) * i / TICKS
        xv = x0 + (x1 - x0) * i / TICKS
        parts.append(
            f'<line x1="{PAD_LEFT}" x2="{PAD_LEFT + plot_w}" y1="{py(yv):.1f}" '
            f'y2="{py(yv):.1f}" class="chart-grid"/>'
        )
        parts.append(
            f'<text x="{PAD_LEFT - 4}" y="{py(yv) + 4:.1f}" text-anchor="end" '
            f'class="chart-tick">{_nice(yv)}</text>'
        )
        parts.append(
            f'<text x="{px(xv):.1f}" y="{HEIGHT - PAD_BOTTOM + 14}" text-anchor="middle" '
            f'class="chart-tick">{_nice(round(xv))}</text>'
        )
    parts.append(
        f'<text x="{PAD_LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle" '
        f'class="chart-tick">{X_COLUMN}</text>'
    )
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{px(a):.1f},{py(b):.1f}" for i, (a, b) in enumerate(points)
    )
    parts.append(f'<path d="{path}" class="chart-line"/>')
    for a, b in points if len(points) <= 60 else ():
        parts.append(
            f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.5" class="chart-dot">'
            f"<title>{X_COLUMN} {_nice(a)}: {_nice(b)}</title></circle>"
        )
    if marker is not None:
        parts.append(
            f'<line x1="{px(marker):.1f}" x2="{px(marker):.1f}" y1="{PAD_TOP}" '
            f'y2="{PAD_TOP + plot_h}" class="chart-marker"/>'
        )
        parts.append(
            f'<text x="{px(marker) + 3:.1f}" y="{PAD_TOP + 12}" class="chart-marker-label">'
            f"{escape(marker_label)}</text>"
        )
    return "".join(parts) + "</svg>"


def charts_html(curves: Curves, marker: float | None = None, marker_label: str = "") -> str:
    """The charts of one CSV, one per column."""
    return "".join(
        line_chart(curves.x, ys, f"{curves.name}: {column}", marker, marker_label)
        for column, ys in curves.series.items()
    )
