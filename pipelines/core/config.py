"""Typed, frozen stage configs read from params.yaml and validated before any work.

Every stage declares a frozen dataclass whose fields are its params section. Bounds and
choices live in the field metadata (``bounded``) or in ``Literal`` types, so a bad value is
rejected with a message naming the exact key (``crappify.jpeg_quality[1]``) and the value.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipelines.core.tasks import COLORIZE_SCALES

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params value is missing, unknown, of the wrong type or out of range."""


def bounded(
    default: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> Any:
    """A dataclass field whose numeric value (or every item of a tuple value) lies in [lo, hi]."""
    kind = "default_factory" if isinstance(default, (list, dict)) else "default"
    return field(**{kind: default}, metadata={"lo": lo, "hi": hi, "lo_open": lo_open})


def section(name: str) -> Any:
    """A field filled from another params section (a stage that needs the crappify settings)."""
    return field(default=None, metadata={"section": name})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_bounds(value: Any, meta: Mapping[str, Any], key: str) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if item is None:
            continue
        too_low = lo is not None and (item <= lo if meta.get("lo_open") else item < lo)
        if too_low or (hi is not None and item > hi):
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            bracket = "(" if meta.get("lo_open") else "["
            raise ConfigError(f"{key}: {value!r} is out of range {bracket}{lo_s}, {hi_s}]")


def build(cls: type, section: Any, prefix: str, given: Mapping[str, Any] | None = None) -> Any:
    """Build dataclass ``cls`` from the mapping ``section``; keys are reported under ``prefix``.

    ``given`` supplies already-built field values (the ``base`` config of a stage).
    """
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {section!r}")
    given = dict(given or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in given}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name in section:
            value = _coerce(section[name], hints[name], key)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif dataclasses.is_dataclass(hints[name]):
            value = build(hints[name], {}, key)
        else:
            raise ConfigError(f"{key}: missing")
        _check_bounds(value, f.metadata, key)
        kwargs[name] = value
    obj = cls(**kwargs, **given)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{prefix}.{exc}") from None
    return obj


class ParamsLoader(yaml.SafeLoader):
    """YAML 1.2 floats too: ``dvc exp run -S lr=1e-5`` writes ``1e-05``, a string to YAML 1.1."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_params(path: Path | str = DEFAULT_PARAMS) -> dict:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=ParamsLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return data


@dataclass(frozen=True)
class Paths:
    """Where stages read and write, relative to the repository root."""

    hr: str = "data/hr"
    lr: str = "data/lr"
    generated: str = "data/generated"
    downloads: str = "data/downloads"
    models: str = "models"
    checkpoints: str = "checkpoints"
    metrics: str = "metrics"
    plots: str = "plots"
    reports: str = "reports"  # the evaluation's report page, index.html (git-ignored)
    logs: str = "logs"  # timings and throughput of each run: git-ignored, not DVC metrics


@dataclass(frozen=True)
class BaseConfig:
    seed: int = bounded(42, lo=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast where the device supports it (CUDA; CPU when opted in)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # restore: undo downscaling, JPEG and watermarks; colorize: colour from the luminance
    task: Literal["restore", "colorize"] = "restore"
    scale: int = bounded(4, lo=1, hi=8)
    crop: int = bounded(128, lo=8)
    # training stages: single = one process; torchrun = data-parallel over nproc processes;
    # auto = over the GPUs when there are several, over 2 processes on a CPU of 2+ cores
    launcher: Literal["single", "torchrun", "auto"] = "single"
    nproc: int = bounded(1, lo=1)
    sync_batchnorm: bool = False
    # "" = sqlite database at the repository root
    tracking_uri: str = ""
    experiment: str = "decrappify"
    paths: Paths = field(default_factory=Paths)

    def check(self) -> None:
        if self.scale & (self.scale - 1):
            raise ConfigError(f"scale: {self.scale} must be a power of two (1, 2, 4, 8)")
        if self.task == "colorize" and self.scale not in COLORIZE_SCALES:
            raise ConfigError(
                f"scale: {self.scale} with base.task colorize; a colorizer works at scale "
                f"{', '.join(map(str, COLORIZE_SCALES))}"
            )
        if self.crop % self.scale:
            raise ConfigError(f"crop: {self.crop} is not divisible by scale {self.scale}")

    def check_crop(self, key: str, crop: int) -> None:
        """A stage's crop (``key`` in its section) must give whole LR pixels at this scale."""
        if crop % self.scale:
            raise ConfigError(f"{key}: {crop} is not divisible by base.scale {self.scale}")


def load(
    cls: type,
    section: str,
    params: Path | str | Mapping = DEFAULT_PARAMS,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Load the stage config ``cls`` from the ``section`` of ``params``, with ``base`` injected.

    ``overrides`` maps dotted keys (``crappify.workers``) to values, as ``dvc exp run -S`` does.
    """
    # a copy: overrides must not leak into the caller's mapping
    data = copy.deepcopy(dict(params)) if isinstance(params, Mapping) else read_params(params)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    if section not in data:
        raise ConfigError(f"{section}: missing section in params")
    base = build(BaseConfig, data.get("base"), "base")
    given: dict[str, Any] = {"base": base}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        other = f.metadata.get("section")
        if other:
            if other not in data:
                raise ConfigError(f"{other}: missing section in params (needed by {section})")
            given[f.name] = build(hints[f.name], data[other], other, given={"base": base})
    return build(cls, data[section], section, given=given)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def as_dict(cfg: Any) -> dict:
    """A plain, JSON-able dict of a config (tuples as lists), for logs and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def flatten(d: Mapping, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, for MLflow params."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
