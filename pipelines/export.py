"""Stage: the chosen generator in the forms other tools run, beside the models.

``models/export/`` gets ``gan_generator.safetensors`` (plain weights with the metadata that
rebuilds them), ``gan_generator.onnx`` (float32 NCHW RGB in [0, 1], dynamic size, checked
against PyTorch before it is written), optionally ``gan_generator.fp16.onnx``, and a model
card with evaluate's scores (``gan_generator.md``, ``gan_generator.card.json``). The
building blocks are in ``pipelines.exporting``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.core.config import DEFAULT_PARAMS, BaseConfig, ConfigError, bounded, read_params
from pipelines.core.files import atomic_dir
from pipelines.core.results import write_results
from pipelines.exporting.exports import ExportSettings, export_generator, load_source
from pipelines.running.stage import stage_main
from pipelines.running.tracking import repo_root

STAGE = "export"


@dataclass(frozen=True)
class ExportConfig:
    base: BaseConfig
    model: str = "gan_generator"  # <paths.models>/<model>.pt
    out: str = "export"  # folder under paths.models
    opset: int = bounded(17, lo=13, hi=20)  # ONNX opset of the graphs
    fp16: bool = False  # also <model>.fp16.onnx (float16 weights and maths)
    # (height, width) LR px of the parity check against PyTorch; odd sizes exercise the padding
    check_sizes: tuple[tuple[int, int], ...] = ((29, 61), (50, 35))
    tolerance: float = bounded(1e-3, lo=0.0, lo_open=True)  # max abs difference, fp32
    fp16_tolerance: float = bounded(2e-3, lo=0.0, lo_open=True)  # the same for fp16

    def check(self) -> None:
        if not self.check_sizes:
            raise ConfigError("check_sizes: give at least one (height, width) to check")
        for i, size in enumerate(self.check_sizes):
            if min(size) < 1:
                raise ConfigError(f"check_sizes[{i}]: {list(size)} is not a size in px")

    def settings(self) -> ExportSettings:
        return ExportSettings(
            opset=self.opset,
            fp16=self.fp16,
            check_sizes=self.check_sizes,
            tolerance=self.tolerance,
            fp16_tolerance=self.fp16_tolerance,
        )


def run(cfg: ExportConfig, tracker=None, params_file: Path | str = DEFAULT_PARAMS) -> dict:
    """Export ``cfg.model``; the metadata records the training sections of ``params_file``."""
    base = cfg.base
    try:
        params = read_params(params_file)
    except ConfigError:
        params = {}
    source = load_source(str(Path(base.paths.models) / f"{cfg.model}.pt"))
    evaluation_file = Path(base.paths.metrics) / "evaluate.json"
    evaluation = json.loads(evaluation_file.read_text()) if evaluation_file.is_file() else None
    out = Path(base.paths.models) / cfg.out
    with atomic_dir(out) as tmp:
        result = export_generator(
            source,
            tmp,
            root=repo_root(),
            params=params,
            evaluation=evaluation,
            settings=cfg.settings(),
        )
    metrics = {k: v for k, v in result.items() if k != "files"}
    metrics["bytes"] = {f: (out / f).stat().st_size for f in result["files"]}
    write_results(base, STAGE, metrics, run_keys=())
    if tracker is not None:
        for f in result["files"]:
            tracker.log_artifact(out / f, artifact_path=STAGE)
        tracker.set_tags({"decrappify.export.settings": json.dumps(asdict(cfg.settings()))})
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, ExportConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
