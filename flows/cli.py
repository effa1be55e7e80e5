"""The ``decrappify`` command: one subcommand per thing a user starts.

Each subcommand is an ``add_<name>(subparsers)`` function that registers its parser and the
function that runs it, so a new subcommand is one more function and one more line in
``build_parser``. Heavy imports (Prefect, DVC, torch) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decrappify", description="Reproducible image restoration: train and run the pipeline."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run(sub)
    add_serve(sub)
    add_deploy(sub)
    add_worker(sub)
    add_restore(sub)
    add_register(sub)
    add_report(sub)
    add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args) or 0


# -- training --------------------------------------------------------------------------------
def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        help="only these stages (they run in dvc.yaml order); default: all",
    )
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param for this run, as `dvc exp run -S` does; the run "
        "becomes a DVC experiment and params.yaml is left alone",
    )
    parser.add_argument("--experiment", default="decrappify", help="MLflow experiment name")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the DVC repository (default: $DECRAPPIFY_ROOT or the current one)",
    )


def _overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings; the value stays text for DVC to parse, as ``-S`` does."""
    from pipelines.core.config import ConfigError
    from pipelines.running.stage import split_override

    try:
        return dict(map(split_override, items))
    except ConfigError as exc:
        raise SystemExit(f"decrappify: error: {exc}") from None


def _root(args: argparse.Namespace) -> Path:
    from pipelines.running.tracking import repo_root

    return args.root.resolve() if args.root else repo_root()


def add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the training flow now, in this process",
        description="Run the training flow: each selected DVC stage as a "
        "Prefect task, tracked in MLflow.",
    )
    _training_options(p)
    p.add_argument(
        "--stage-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop a stage (and everything it started) after this long",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # Without PREFECT_API_URL the run starts a temporary Prefect server, which on a busy
    # machine takes longer than Prefect's default limit of 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from flows.training import training

    state = training(
        stages=args.stages,
        overrides=_overrides(args.set) or None,
        experiment=args.experiment,
        root=str(_root(args)),
        stage_timeout=args.stage_timeout,
        return_state=True,
    )
    if not state.is_completed():
        print(f"training {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    for stage, outcome in state.result().items():
        print(f"{stage}: {outcome}")
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the training flow from this machine, on a schedule",
        description="Serve the training flow (needs PREFECT_API_URL): runs "
        "triggered from the UI or `prefect deployment run "
        "training/NAME` execute here; --cron schedules them.",
    )
    _training_options(p)
    p.add_argument("--name", default="training", help="deployment name (default: training)")
    p.add_argument("--cron", default=None, help='schedule, e.g. "0 3 * * *" (03:00 every day)')
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from flows.deployments import serve

    serve(
        _root(args),
        name=args.name,
        cron=args.cron,
        stages=args.stages,
        overrides=_overrides(args.set) or None,
        experiment=args.experiment,
    )
    return 0


# -- work pools ------------------------------------------------------------------------------
def add_deploy(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="register the deployments of prefect.yaml",
        description="`prefect deploy --all` from the repository root; arguments "
        "after -- go to `prefect deploy` instead of --all.",
    )
    p.add_argument("--root", type=Path, default=None, help="repository holding prefect.yaml")
    p.add_argument("prefect_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=_deploy)


def _deploy(args: argparse.Namespace) -> int:
    from flows.deployments import deploy

    extra = args.prefect_args[1:] if args.prefect_args[:1] == ["--"] else args.prefect_args
    return deploy(_root(args), extra)


def add_worker(sub) -> None:
    from flows.deployments import WORK_POOL

    p = sub.add_parser(
        "worker",
        help="start a process worker in this checkout",
        description="Start a Prefect process worker whose flow runs execute in "
        "this repository (run it on the GPU machine). It polls the "
        "work queue `checkout`; with --git-url, `from-git`.",
    )
    p.add_argument("--root", type=Path, default=None, help="the repository checkout")
    p.add_argument("--pool", default=WORK_POOL, help=f"work pool (default: {WORK_POOL})")
    p.add_argument("--run-once", action="store_true", help="take the runs waiting now, then exit")
    p.add_argument(
        "--git-url",
        default=None,
        help="the repository that deployments pulling from git clone "
        "(exported as $DECRAPPIFY_GIT_URL)",
    )
    p.set_defaults(handler=_worker)


def _worker(args: argparse.Namespace) -> int:
    from flows.deployments import start_worker

    start_worker(_root(args), pool=args.pool, run_once=args.run_once, git_url=args.git_url)
    return 0


# -- using a trained generator ---------------------------------------------------------------
def add_restore(sub) -> None:
    p = sub.add_parser(
        "restore",
        help="restore image files with a trained generator",
        description="Restore images with a trained generator. A bad input is "
        "reported and skipped; exit status 1 when any input failed, "
        "2 when nothing could be restored (output folder, model).",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) or glob patterns (quoted, ** recurses)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder: <DIR>/<path below the input><suffix>.png",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH|URI",
        help="generator checkpoint, exported .onnx (run with onnxruntime) or "
        ".safetensors file, or MLflow model URI such as "
        "models:/decrappify-generator@champion (a colorizer: "
        "models:/decrappify-colorizer@champion) or runs:/<run id>/gan_generator "
        "(default: models/gan_generator.pt of the repository)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also write <name>_compare.png: the input beside the restoration",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=256,
        help="input px per tile; memory grows with its square (default: 256)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=32,
        help="input px shared by neighbouring tiles, blended (default: 32)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--suffix", default="_restored", help="appended to each output's name (default: _restored)"
    )
    p.add_argument(
        "--task",
        choices=("restore", "colorize"),
        default=None,
        help="refuse a model of the other task (default: whatever the model does)",
    )
    p.add_argument(
        "--render-size",
        type=int,
        default=0,
        metavar="PX",
        help="colorizers: compute colour at this longest side and put it on the full-size "
        "luminance (faster on large photos; default 0: full size)",
    )
    p.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average each tile over its 8 flips and quarter turns: 0.05-0.2 dB more on "
        "clean photos, none on watermarks, slightly smoother (README Results); 8 times the time",
    )
    p.set_defaults(handler=_restore)


def _restore(args: argparse.Namespace) -> int:
    from pipelines.core.errors import StageError
    from pipelines.inference.restore_files import restore_paths

    try:
        summary = restore_paths(
            args.inputs,
            args.out,
            args.model,
            compare=args.compare,
            tile=args.tile,
            overlap=args.overlap,
            device=args.device,
            suffix=args.suffix,
            task=args.task,
            render_size=args.render_size,
            self_ensemble=args.self_ensemble,
            progress=print,
        )
    except StageError as exc:  # output folder, model or settings: nothing was restored
        print(f"decrappify restore: error: {exc}", file=sys.stderr)
        return 2
    print(summary.line())
    return 1 if summary.failed else 0


def add_register(sub) -> None:
    p = sub.add_parser(
        "register",
        help="register the trained generator and set the champion",
        description="Make the MLflow registry match the checkout, whichever "
        "stages DVC skipped: log the GAN generator file as a version "
        "of decrappify-generator (decrappify-colorizer for base.task "
        "colorize) unless one with its digest exists, "
        "then apply the evaluation in metrics/evaluate.json (tags and "
        "the champion alias). `make pipeline` runs it after `dvc repro`.",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the DVC repository (default: $DECRAPPIFY_ROOT or the current one)",
    )
    p.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="params file, relative to the repository (default: params.yaml)",
    )
    p.set_defaults(handler=_register)


def _trade_text(trade) -> str:
    if trade is None:
        return "by gain"
    return f"by gain, or within {trade.max_drop:g} dB of it and better by {trade.metric}"


def _register(args: argparse.Namespace) -> int:
    import json
    import logging

    from pipelines.core.config import ConfigError, load
    from pipelines.core.tasks import REGISTERED_MODEL
    from pipelines.evaluate import EvaluateConfig, model_file, model_name
    from pipelines.running import registry
    from pipelines.running.tracking import resolve_tracking_uri

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = _root(args)
    try:
        cfg = load(EvaluateConfig, "evaluate", root / args.params)
    except ConfigError as exc:
        print(f"decrappify register: error: {root / args.params}: {exc}", file=sys.stderr)
        return 2
    base = cfg.base
    uri = resolve_tracking_uri(base.tracking_uri, root)
    summary_file = root / base.paths.metrics / "evaluate.json"
    generator = root / base.paths.models / "gan_generator.pt"
    for needed in (summary_file, generator):
        if not needed.is_file():
            print(
                f"decrappify register: error: {needed} missing (run `dvc repro` first)",
                file=sys.stderr,
            )
            return 2
    name = REGISTERED_MODEL[base.task]  # a colorizer never becomes the restorers' champion
    if not registry.register_file(uri, base.experiment, generator, name):
        return 1
    if cfg.self_ensemble:
        print(
            f"models:/{name}@{registry.CHAMPION}: not moved; evaluate.self_ensemble scored "
            "the models averaged over flips and turns, not their own single pass"
        )
        return 0
    results = json.loads(summary_file.read_text())
    dataset = next(iter(results))
    files = {model_name(m): root / model_file(m, base) for m in cfg.models}
    trade = registry.trade_of(root / base.paths.metrics)
    champion = registry.record_evaluation(
        uri, dataset, results[dataset], files, name=name, trade=trade
    )
    alias = f"models:/{name}@{registry.CHAMPION}"
    print(
        f"{alias} -> version {champion}"
        if champion
        else f"{alias}: no version beats {cfg.reference} and the pretrained generator "
        f"({_trade_text(trade)}); alias not set"
    )


# -- looking at results ------------------------------------------------------------------------
def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="print the path of the last evaluation's report page",
        description="The report page the evaluate stage writes (evaluation "
        "table, restorations, training curves, provenance): print "
        "its path, or open it in a browser with --open.",
    )
    p.add_argument("--root", type=Path, default=None, help="the DVC repository")
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from flows.artifacts import PARAMS_ERRORS, workspace_paths
    from pipelines.reporting.page import REPORT_NAME

    try:
        reports_dir = workspace_paths(_root(args))[2]
    except PARAMS_ERRORS as exc:
        print(f"decrappify report: params.yaml unreadable: {exc}", file=sys.stderr)
        return 1
    path = (reports_dir / REPORT_NAME).resolve()
    if not path.is_file():
        print(
            f"decrappify report: {path} does not exist yet: run the evaluate stage "
            "(`dvc repro` or `decrappify run`)",
            file=sys.stderr,
        )
        return 1
    print(path)
    if args.open:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            print(f"decrappify report: no browser found; open {path.as_uri()}", file=sys.stderr)
            return 1
    return 0


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a generator as safetensors, ONNX and a model card",
        description="Write <name>.safetensors, <name>.onnx (checked against "
        "PyTorch first), optionally <name>.fp16.onnx, and the model "
        "card <name>.md / <name>.card.json into DIR. The metadata "
        "and card read params.yaml, dvc.lock and "
        "metrics/evaluate.json of the repository. Exit status 2 when "
        "nothing could be exported.",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH|URI",
        help="generator checkpoint (.pt), exported .safetensors, or MLflow model URI "
        "(default: models/gan_generator.pt of the repository)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the repository whose params, dvc.lock and evaluation describe the "
        "model (default: $DECRAPPIFY_ROOT or the current one)",
    )
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace

    from pipelines.core.config import ConfigError, read_params
    from pipelines.core.errors import StageError
    from pipelines.exporting.exports import ExportSettings, export_generator, load_source

    root = _root(args)
    settings = replace(
        ExportSettings(), fp16=args.fp16, **({"opset": args.opset} if args.opset else {})
    )
    try:
        params = read_params(root / "params.yaml")
    except ConfigError:
        params = None
    evaluation_file = root / "metrics" / "evaluate.json"
    evaluation = json.loads(evaluation_file.read_text()) if evaluation_file.is_file() else None
    try:
        source = load_source(args.model or str(root / "models" / "gan_generator.pt"))
        result = export_generator(
            source, args.out, root=root, params=params, evaluation=evaluation, settings=settings
        )
    except (StageError, OSError) as exc:  # nothing was written
        print(f"decrappify export: error: {exc}", file=sys.stderr)
        return 2
    for f in result["files"]:
        print(args.out / f)
    print(f"ONNX Runtime vs PyTorch: max abs difference {result['onnx_max_abs_diff']:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
