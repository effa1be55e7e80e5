"""The model card of an export: what it restores, how well, and how to run it.

Written twice from one dict: ``<name>.card.json`` for programs, ``<name>.md`` for people.
The degradations are read from the crappify params the generator was trained with, the scores
from the evaluate stage's ``metrics/evaluate.json`` when there is one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# metrics shown in the Markdown table, in this order, when evaluate measured them
TABLE_METRICS = ("psnr_y", "ssim", "ms_ssim", "lpips", "haarpsi")


def degradations(crappify: Mapping[str, Any], scale: int) -> list[str]:
    """The damage the training inputs had, one plain sentence each."""
    c = dict(crappify)
    out = []
    if scale > 1:
        how = (
            f"shorter side {c.get('short_side')} px"
            if c.get("size_mode") == "short_side"
            else f"1/{scale} of the size"
        )
        out.append(f"downscaled to {how} ({c.get('resample', 'area')} resampling)")
    if c.get("jpeg_quality"):
        lo, hi = c["jpeg_quality"]
        out.append(f"JPEG compression, quality {lo}-{hi}")
    mark = c.get("watermark", "none")
    if mark != "none":
        text = "the JPEG quality as text" if mark == "quality" else repr(c.get("watermark_text"))
        size = [
            f"height {_range(c['watermark_height'])} of the shorter side"
            if c.get("watermark_height")
            else "",
            f"opacity {_range(c['watermark_opacity'])}" if c.get("watermark_opacity") else "",
        ]
        out.append(", ".join([f"a watermark: {text}", *filter(None, size)]))
    if c.get("blur_prob"):
        out.append(
            f"Gaussian blur with probability {c['blur_prob']}, sigma "
            f"{_range(c.get('blur_sigma'))} px"
        )
    if c.get("noise_prob"):
        out.append(
            f"Gaussian noise with probability {c['noise_prob']}, sigma "
            f"{_range(c.get('noise_sigma'))} (0-255)"
        )
    if c.get("grayscale"):
        out.append("converted to grayscale (the model colourises)")
    return out


def _range(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}-{value[1]}" if value[0] != value[1] else f"{value[0]}"
    return str(value)


def build(
    name: str,
    meta: Mapping[str, Any],
    files: Mapping[str, str],
    evaluation: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The card as a dict: ``meta`` is the parsed export metadata, ``files`` kind -> file name."""
    params = meta.get("params") or {}
    scale = int(meta["scale"])
    return {
        "name": name,
        "task": meta["task"],
        "scale": scale,
        "architecture": meta["arch"],
        "min_input_size": int(meta.get("min_size", 1)),
        "input": meta.get("input"),
        "output": meta.get("output"),
        "trained_on": degradations(params.get("crappify") or {}, scale),
        "git_commit": meta.get("git_commit"),
        "data_md5": meta.get("data_md5"),
        "files": dict(files),
        "evaluation": dict(evaluation) if evaluation else None,
        "params": params,
    }


def markdown(card: Mapping[str, Any]) -> str:
    name, scale, files = card["name"], card["scale"], card["files"]
    onnx = files.get("onnx", f"{name}.onnx")
    lines = [
        f"# {name}: x{scale} image restoration",
        "",
        (
            f"A generator trained NoGAN-style to restore damaged photos"
            f"{f' and enlarge them {scale}x' if scale > 1 else ''}."
        ),
        "",
        "## What it restores",
        "",
    ]
    lines += [f"- {d}" for d in card["trained_on"]] or ["- (no degradation recorded)"]
    lines += [
        "",
        f"Input: {card['input']}. Output: {card['output']}.",
        f"Inputs smaller than {card['min_input_size']} px are padded inside the graph.",
        "",
        "## Evaluation",
        "",
    ]
    lines += _tables(card.get("evaluation"), name)
    lines += ["", "## Files", ""]
    lines += [f"- `{f}`: {kind}" for kind, f in files.items()]
    lines += [
        "",
        "## Running it",
        "",
        (
            f"chaiNNer: drag `{onnx}` into a *Load Model* node (ONNX), connect it to "
            f"*Upscale Image*; chaiNNer tiles large images itself."
        ),
        "",
        "onnxruntime, with numpy and Pillow:",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        "from PIL import Image",
        f'session = ort.InferenceSession("{onnx}", providers=["CPUExecutionProvider"])',
        'x = np.asarray(Image.open("in.png").convert("RGB"), np.float32) / 255',
        'y = session.run(None, {"input": x.transpose(2, 0, 1)[None]})[0][0]',
        (
            "Image.fromarray((y.transpose(1, 2, 0).clip(0, 1) * 255).round().astype(np.uint8))"
            '.save("out.png")'
        ),
        "```",
        "",
        f"decrappify, tiled: `decrappify restore photos/ --out restored/ --model {onnx}`",
        "",
        "## Provenance",
        "",
        f"- git commit: `{card['git_commit']}`",
        f"- training data (dvc.lock md5 of data/hr): `{card['data_md5']}`",
        f"- architecture: `{json.dumps(card['architecture'], sort_keys=True)}`",
        "",
    ]
    return "\n".join(lines)


def _tables(evaluation: Mapping[str, Any] | None, name: str) -> list[str]:
    if not evaluation:
        return ["Not evaluated (no metrics/evaluate.json)."]
    lines: list[str] = []
    for dataset, result in evaluation.items():
        methods = [m for m, v in result.items() if isinstance(v, dict) and m != "gain_db"]
        metrics = [k for k in TABLE_METRICS if any(k in result[m] for m in methods)]
        gains = result.get("gain_db") or {}
        lines += [
            f"{dataset} ({result.get('images', '?')} images; gain: Y-PSNR over bicubic):",
            "",
            "| method | " + " | ".join(metrics) + " | gain dB |",
            "|---" * (len(metrics) + 2) + "|",
        ]
        for m in methods:
            label = f"**{m}** (this model)" if m == name else m
            cells = [f"{result[m][k]:.4g}" if k in result[m] else "" for k in metrics]
            gain = f"{gains[m]:+.3f}" if m in gains else ""
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} |")
        lines.append("")
    return lines
