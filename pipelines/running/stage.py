"""The thin ``main()`` every stage shares: parse args, load and validate params, run, track."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import DEFAULT_PARAMS, ConfigError, ParamsLoader, as_dict, load
from pipelines.core.errors import StageError
from pipelines.running.tracking import Tracker
from pipelines.training.distributed import (
    current,
    launch,
    relaunch,
    shutdown,
    under_torchrun,
)

log = logging.getLogger("decrappify")


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def split_override(item: str) -> tuple[str, str]:
    """``key=value`` as ``dvc exp run -S`` takes it -> (key, value text)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{item!r}: an override is key=value")
    return key, value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` overrides with values parsed as params.yaml values are."""
    return {key: yaml.load(value, Loader=ParamsLoader) for key, value in map(split_override, items)}


def batch_sizes(cfg: Any) -> list[int]:
    """A training stage's global batch sizes, its own and its phases': processes share them."""
    own = getattr(cfg, "batch_size", None)
    return ([own] if own else []) + [p.batch_size for p in getattr(cfg, "phases", ())]


def stage_main(
    name: str,
    config_cls: type,
    run: Callable[..., Mapping[str, Any]],
    argv: list[str] | None = None,
    distributed: bool = False,
) -> int:
    """Load and check the config, then run the stage; ``distributed`` stages start themselves
    again under torchrun when ``base.launcher`` asks for it."""
    parser = argparse.ArgumentParser(
        prog=f"python -m pipelines.{name}", description=f"Run the {name} stage."
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param for this run only, e.g. -S crappify.workers=1",
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load(config_cls, name, args.params, parse_overrides(args.set))
    except ConfigError as exc:
        print(f"error: {args.params}: {exc}", file=sys.stderr)
        return 2
    if distributed and not under_torchrun():
        try:
            plan = launch(cfg.base.launcher, cfg.base.nproc, cfg.base.device, batch_sizes(cfg))
        except RuntimeError as exc:  # base.device cuda without a GPU
            print(f"error: {args.params}: {exc}", file=sys.stderr)
            return 2
        if plan is not None:
            return relaunch(name, plan, sys.argv[1:] if argv is None else argv)
    try:
        with Tracker(
            name,
            cfg.base.tracking_uri,
            cfg.base.experiment,
            enabled=not args.no_tracking and current().main,
        ) as tracker:
            tracker.log_params(as_dict(cfg))
            metrics = run(cfg, tracker)
            tracker.log_metrics(metrics)
    except (StageError, OSError) as exc:
        # OSError: an output that cannot be written (full disk, read-only folder; files.py
        # says which and that the previous one is intact) or an input that cannot be read
        log.debug("%s failed", name, exc_info=True)
        print(f"error: {name}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown()  # leave the torchrun process group, if this process joined one
    log.info("%s done: %s", name, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return 0
