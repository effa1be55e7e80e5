"""The run's report: one self-contained HTML file (images as data: URIs, CSS and script inline),
which opens from disk with no server and fetches nothing.

It holds the evaluation table (every data set, method and metric, with each method's gain over
bicubic), per test image the input, every method's restoration and the truth at full resolution
with a before/after slider and a zoom, the training curves, and where the results come from
(git commit, dvc.lock digest, the params that differ from the defaults).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipelines.core.files import write_text
from pipelines.core.results import results_file
from pipelines.core.tasks import REFERENCE
from pipelines.imaging.images import encode_png
from pipelines.reporting import charts, provenance
from pipelines.reporting.results import (
    GAIN_KEY,
    LOWER_IS_BETTER,
    methods_of,
    metrics_of,
    reference_of,
)

REPORT_NAME = "index.html"  # in base.paths.reports
CROP = 512  # HR px of each image region shown at full resolution
IMAGES_PER_DATASET = 3  # the page stays a few MB: every cell is a lossless PNG
INPUT_LABEL, TRUTH_LABEL = "input", "truth"
# The CSV whose curve gets the GAN's chosen step marked, and where that step is written.
GAN_SCORES = "gan_scores"


@dataclass
class Sample:
    """One test image: each view (input, methods, truth) as PNG bytes of the same region."""

    dataset: str
    image: str
    views: dict[str, bytes]
    size: tuple[int, int]  # (height, width) of every view
    region: tuple[int, int]  # (y, x) of the region in the HR image


@dataclass
class Samples:
    """Collects the images the report shows, as the evaluation restores them.

    Only a region of at most ``crop`` x ``crop`` HR px per image is kept, PNG-encoded at once,
    so a long evaluation does not hold full restorations in memory.
    """

    scale: int
    per_dataset: int = IMAGES_PER_DATASET
    crop: int = CROP
    items: list[Sample] = field(default_factory=list)

    def wants(self, dataset: str) -> bool:
        return sum(s.dataset == dataset for s in self.items) < self.per_dataset

    def add(
        self,
        dataset: str,
        image: str,
        lr: np.ndarray,
        outputs: Mapping[str, np.ndarray],
        hr: np.ndarray,
    ) -> None:
        """``outputs``: method -> restoration (HR-sized RGB uint8), in the order to show them."""
        if not self.wants(dataset):
            return
        h, w = hr.shape[:2]
        big = cv2.resize(
            lr,
            (lr.shape[1] * self.scale, lr.shape[0] * self.scale),
            interpolation=cv2.INTER_NEAREST,
        )[:h, :w]
        ch, cw = min(h, self.crop), min(w, self.crop)
        y, x = (h - ch) // 2, (w - cw) // 2
        views = {INPUT_LABEL: big, **outputs, TRUTH_LABEL: hr}
        for label, img in views.items():
            if img.shape[:2] != (h, w):
                raise ValueError(f"{dataset}/{image}: {label} is {img.shape[:2]}, HR is {(h, w)}")
        self.items.append(
            Sample(
                dataset,
                image,
                {
                    k: encode_png(np.ascontiguousarray(v[y : y + ch, x : x + cw]))
                    for k, v in views.items()
                },
                (ch, cw),
                (y, x),
            )
        )


def write_report(
    path: Path | str,
    results: Mapping[str, Any],
    samples: Samples | None,
    rows: Sequence[Mapping[str, Any]] = (),
    root: Path | str = ".",
    plots_dir: Path | str = "plots",
    metrics_dir: Path | str = "metrics",
    params_path: Path | str = "params.yaml",
) -> Path:
    """Gather curves and provenance from the workspace ``root`` and write the page atomically."""
    root = Path(root)
    plots_dir, metrics_dir = root / plots_dir, root / metrics_dir
    gan = results_file(metrics_dir, "train_gan")
    chosen = json.loads(gan.read_text()).get("chosen_step") if gan.exists() else None
    params = root / params_path
    info = {
        "git commit": provenance.git_commit(root) or "not a git checkout",
        "dvc.lock sha256 (the stages up to the models)": provenance.lock_digest(root) or "none yet",
    }
    html = build_page(
        results,
        samples.items if samples else [],
        rows,
        charts.read_all(plots_dir),
        provenance.changed_params(params) if params.exists() else [],
        info,
        chosen,
    )
    write_text(path, html)
    return Path(path)


def build_page(
    results: Mapping[str, Any],
    samples: Sequence[Sample],
    rows: Sequence[Mapping[str, Any]],
    curves: Sequence[charts.Curves],
    changes: Sequence[provenance.ParamChange],
    info: Mapping[str, str],
    chosen_step: int | None,
) -> str:
    body = [
        "<h1>Decrappify run report</h1>",
        '<nav><a href="#evaluation">Evaluation</a> <a href="#images">Images</a> '
        '<a href="#curves">Training curves</a> <a href="#provenance">Provenance</a></nav>',
        '<section id="evaluation"><h2>Evaluation</h2>',
        "<p>Means over each data set; under each value its difference to bicubic "
        "(&darr;: lower is better). <b>Bold</b>: the best method of the column.</p>",
        *(_evaluation_table(name, res) for name, res in results.items()),
        "</section>",
        '<section id="images"><h2>Images</h2>',
        "<p>A region of each image at full resolution. Drag the slider (or on the image) to "
        "compare the two views chosen; <kbd>space</kbd> or <em>toggle</em> flips between them; "
        "the zoom enlarges pixels without smoothing.</p>",
        *(_sample_html(i, s, rows) for i, s in enumerate(samples)),
        "</section>",
        '<section id="curves"><h2>Training curves</h2>',
        *(_curves_html(c, chosen_step) for c in curves),
        "" if curves else "<p>No plots/*.csv yet.</p>",
        "</section>",
        '<section id="provenance"><h2>Provenance</h2>',
        _info_table(info),
        _changes_table(changes),
        "</section>",
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Decrappify run report</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


# -- pieces ------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _evaluation_table(dataset: str, res: Mapping[str, Any]) -> str:
    methods, metrics = methods_of(res), metrics_of(res)
    gains = res.get(GAIN_KEY, {})
    ref_name = reference_of(res)
    reference = res.get(ref_name, {}) if ref_name else {}
    best = {}
    for metric in metrics:
        values = [res[m][metric] for m in methods if metric in res[m]]
        if values:
            best[metric] = min(values) if metric in LOWER_IS_BETTER else max(values)
    head = "".join(
        f'<th data-metric="{escape(m)}">{escape(m)}{" &darr;" if m in LOWER_IS_BETTER else ""}</th>'
        for m in metrics
    )
    count = res.get("images", "?")
    lines = [
        f"<h3>{escape(dataset)} <small>({escape(str(count))} image{'' if count == 1 else 's'})"
        "</small></h3>",
        f'<table class="evaluation" data-dataset="{escape(dataset)}"><thead><tr><th>method</th>'
        f'{head}<th data-metric="{GAIN_KEY}">gain over {escape(str(ref_name))}, dB</th>'
        "</tr></thead><tbody>",
    ]
    for method in methods:
        cells = []
        for metric in metrics:
            value = res[method].get(metric)
            if value is None:
                cells.append(f'<td data-metric="{escape(metric)}"></td>')
                continue
            ref = reference.get(metric)
            delta = (
                ""
                if ref is None or method == ref_name
                else f'<span class="delta">{value - ref:+.4f}</span>'
            )
            strong = " best" if value == best.get(metric) else ""
            cells.append(
                f'<td class="num{strong}" data-metric="{escape(metric)}" '
                f'data-value="{value!r}">{_fmt(value)}{delta}</td>'
            )
        gain = gains.get(method)
        cells.append(
            f'<td class="num" data-metric="{GAIN_KEY}"'
            + (f' data-value="{gain!r}">{gain:+.4f}' if gain is not None else ">")
            + "</td>"
        )
        lines.append(
            f'<tr data-method="{escape(method)}"><th>{escape(method)}</th>'
            + "".join(cells)
            + "</tr>"
        )
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _sample_html(index: int, sample: Sample, rows: Sequence[Mapping[str, Any]]) -> str:
    labels = list(sample.views)
    methods = labels[1:-1]
    right = methods[-1] if methods else TRUTH_LABEL
    ref = next((r for r in REFERENCE.values() if r in labels), None)
    left = ref if ref is not None and right != ref else INPUT_LABEL
    h, w = sample.size

    def options(selected: str) -> str:
        return "".join(
            f"<option{' selected' if lab == selected else ''}>{escape(lab)}</option>"
            for lab in labels
        )

    # Each PNG is in the file once, in its thumbnail; the comparison reuses the thumbnail's src.
    thumbs = "".join(
        f'<figure><img class="thumb" data-label="{escape(lab)}" alt="{escape(lab)}" '
        f'src="{_data_uri(png)}"><figcaption>{escape(lab)}</figcaption></figure>'
        for lab, png in sample.views.items()
    )
    scores = [
        r for r in rows if r.get("dataset") == sample.dataset and r.get("image") == sample.image
    ]
    metric_names = list(
        dict.fromkeys(k for r in scores for k in r if k not in ("dataset", "image", "method"))
    )
    score_table = ""
    if scores:
        score_table = (
            '<table class="scores"><tr><th>method</th>'
            + "".join(f"<th>{escape(m)}</th>" for m in metric_names)
            + "</tr>"
            + "".join(
                f"<tr><th>{escape(str(r['method']))}</th>"
                + "".join(f'<td class="num">{_fmt(r.get(m, ""))}</td>' for m in metric_names)
                + "</tr>"
                for r in scores
            )
            + "</table>"
        )
    return f"""<div class="sample" id="sample-{index}" data-width="{w}" data-height="{h}">
<h3>{escape(sample.dataset)} / {escape(sample.image)} <small>{w}&times;{h} px from ({sample.region[1]}, {sample.region[0]})</small></h3>
<div class="controls">
<label>left <select class="left">{options(left)}</select></label>
<label>right <select class="right">{options(right)}</select></label>
<button type="button" class="toggle">toggle</button>
<label>zoom <select class="zoom"><option>1</option><option>2</option><option>4</option><option>8</option></select>&times;</label>
<input type="range" class="slider" min="0" max="100" value="50" aria-label="slider">
<span class="shown"></span>
</div>
<div class="viewport"><div class="compare" style="width:{w}px;height:{h}px">
<img class="under" alt="left" draggable="false"><div class="over"><img class="top" alt="right" draggable="false"></div>
<div class="divider"></div></div></div>
<div class="thumbs">{thumbs}</div>
{score_table}
</div>"""


def _curves_html(curves: charts.Curves, chosen_step: int | None) -> str:
    marker = chosen_step if curves.name == GAN_SCORES else None
    label = f"chosen step {chosen_step}" if marker is not None else ""
    note = (
        f"<p>The GAN stage keeps the checkpoint of step {chosen_step} (the dashed line).</p>"
        if marker is not None
        else ""
    )
    return (
        f'<div class="curves" data-name="{escape(curves.name)}"><h3>{escape(curves.name)}'
        f"</h3>{note}{charts.charts_html(curves, marker, label)}</div>"
    )


def _info_table(info: Mapping[str, str]) -> str:
    return (
        '<table class="info">'
        + "".join(
            f"<tr><th>{escape(k)}</th><td><code>{escape(str(v))}</code></td></tr>"
            for k, v in info.items()
        )
        + "</table>"
    )


def _changes_table(changes: Sequence[provenance.ParamChange]) -> str:
    if not changes:
        return "<p>Every param has its default value.</p>"
    return (
        '<h3>Params that differ from the defaults</h3><table class="params"><tr><th>key</th>'
        "<th>default</th><th>this run</th></tr>"
        + "".join(
            f"<tr><td><code>{escape(c.key)}</code></td><td><code>"
            f"{escape(json.dumps(c.default))}</code></td><td><code>"
            f"{escape(json.dumps(c.value))}</code></td></tr>"
            for c in changes
        )
        + "</table>"
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
nav a{margin-right:1em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0 1em} th,td{padding:.25em .6em;border:1px solid #ddd}
thead th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:bold} .delta{display:block;font-size:11px;color:#666}
.sample{margin:1em 0 2em} .controls{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin:.4em 0}
.slider{width:240px} .viewport{max-width:100%;max-height:80vh;overflow:auto;border:1px solid #ccc;display:inline-block}
.compare{position:relative;cursor:ew-resize;user-select:none}
.compare img{position:absolute;left:0;top:0;width:100%;height:100%;image-rendering:pixelated}
.over{position:absolute;inset:0;clip-path:inset(0 0 0 50%)}
.divider{position:absolute;top:0;bottom:0;left:50%;width:2px;background:#ff0;box-shadow:0 0 2px #000}
.thumbs{display:flex;gap:.5em;flex-wrap:wrap;margin:.4em 0} .thumbs figure{margin:0;text-align:center}
.thumb{width:120px;height:auto;cursor:pointer;border:2px solid transparent}
.thumb.chosen{border-color:#06c} figcaption{font-size:12px}
.scores td,.scores th{font-size:12px}
.chart{margin:0 .6em .6em 0;border:1px solid #eee} .chart-title{font-size:12px;font-weight:bold}
.chart-tick{font-size:10px;fill:#555} .chart-frame{fill:none;stroke:#999}
.chart-grid{stroke:#eee} .chart-line{fill:none;stroke:#06c;stroke-width:1.6}
.chart-dot{fill:#06c} .chart-marker{stroke:#c00;stroke-dasharray:4 3;stroke-width:1.5}
.chart-marker-label{font-size:10px;fill:#c00}
"""

SCRIPT = """
'use strict';
document.querySelectorAll('.sample').forEach(function (box) {
  var w = +box.dataset.width, h = +box.dataset.height;
  var src = {};
  box.querySelectorAll('.thumb').forEach(function (t) { src[t.dataset.label] = t.src; });
  var left = box.querySelector('.left'), right = box.querySelector('.right');
  var zoom = box.querySelector('.zoom'), slider = box.querySelector('.slider');
  var compare = box.querySelector('.compare'), over = box.querySelector('.over');
  var divider = box.querySelector('.divider'), shown = box.querySelector('.shown');
  function place(pct) {
    pct = Math.max(0, Math.min(100, pct));
    slider.value = pct;
    over.style.clipPath = 'inset(0 0 0 ' + pct + '%)';
    divider.style.left = pct + '%';
    shown.textContent = 'left of the line: ' + left.value + ', right of it: ' + right.value;
  }
  function show() {
    box.querySelector('.under').src = src[left.value];
    box.querySelector('.top').src = src[right.value];
    box.querySelectorAll('.thumb').forEach(function (t) {
      t.classList.toggle('chosen', t.dataset.label === left.value || t.dataset.label === right.value);
    });
    place(+slider.value);
  }
  function scale() {
    var z = +zoom.value;
    compare.style.width = (w * z) + 'px';
    compare.style.height = (h * z) + 'px';
  }
  left.addEventListener('change', show);
  right.addEventListener('change', show);
  zoom.addEventListener('change', scale);
  slider.addEventListener('input', function () { place(+slider.value); });
  box.querySelector('.toggle').addEventListener('click', function () {
    place(+slider.value > 50 ? 0 : 100);
  });
  var dragging = false;
  function at(e) {
    var r = compare.getBoundingClientRect();
    place((e.clientX - r.left) / r.width * 100);
  }
  compare.addEventListener('mousedown', function (e) { dragging = true; at(e); });
  window.addEventListener('mousemove', function (e) { if (dragging) at(e); });
  window.addEventListener('mouseup', function () { dragging = false; });
  box.querySelectorAll('.thumb').forEach(function (t) {
    t.addEventListener('click', function () { right.value = t.dataset.label; show(); });
  });
  box.tabIndex = 0;
  box.addEventListener('keydown', function (e) {
    if (e.key === ' ') { e.preventDefault(); box.querySelector('.toggle').click(); }
  });
  show();
});
"""


def samples_table(samples: Samples, rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Columns of a table with one row per shown image and method: its scores and its image
    (an RGB array), for MLflow's table view, which compares restorations by eye."""
    records = []
    for sample in samples.items:
        for row in rows:
            png = sample.views.get(str(row.get("method")))
            if (row.get("dataset"), row.get("image")) != (
                sample.dataset,
                sample.image,
            ) or png is None:
                continue
            bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
            records.append({**row, "restoration": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)})
    columns = list(dict.fromkeys(k for r in records for k in r))
    return {k: [r.get(k) for r in records] for k in columns}
