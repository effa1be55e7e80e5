"""Where a run's results come from: the git commit, the dvc.lock digest, and the params that
differ from the defaults of the stage configs (the dataclasses, not params.yaml's comments)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.code_deps import code_commit
from pipelines.core.config import (
    BaseConfig,
    ConfigError,
    as_dict,
    build,
    flatten,
    read_params,
)


@dataclass(frozen=True)
class ParamChange:
    key: str  # dotted, as `dvc exp run -S` takes it
    default: Any
    value: Any


def git_commit(root: Path) -> str | None:
    """The commit of the code that made the results (``code_deps.code_commit``)."""
    return code_commit(root)


# The stages whose lock entries the report leaves out: evaluate writes the report itself (its
# entry holds the report's hash) and export runs after it; what was evaluated is the rest.
AFTER_THE_MODELS = ("evaluate", "export")


def lock_digest(root: Path) -> str | None:
    """sha256 of ``root``/dvc.lock's entries for the stages that made the evaluated models
    (canonical YAML), None when there is none yet: the same models give the same digest, so a
    rerun that reproduces them rewrites the report byte for byte."""
    import yaml

    path = Path(root) / "dvc.lock"
    if not path.exists():
        return None
    lock = yaml.safe_load(path.read_text()) or {}
    stages = {k: v for k, v in (lock.get("stages") or {}).items() if k not in AFTER_THE_MODELS}
    return hashlib.sha256(yaml.safe_dump(stages, sort_keys=True).encode()).hexdigest()


def stage_config_class(stage: str) -> type | None:
    """The typed config of ``pipelines.<stage>``: its dataclass with a ``base`` field."""
    try:
        module = importlib.import_module(f"pipelines.{stage}")
    except ImportError:
        return None
    for value in vars(module).values():
        if (
            dataclasses.is_dataclass(value)
            and isinstance(value, type)
            and value.__module__ == module.__name__
            and any(f.name == "base" for f in dataclasses.fields(value))
        ):
            return value
    return None


def _own_fields(cfg: Any) -> dict:
    """A stage config as a flat dict, without ``base`` and sections borrowed from others."""
    own = {
        f.name
        for f in dataclasses.fields(cfg)
        if f.name != "base" and not f.metadata.get("section") and f.init
    }
    return flatten({k: v for k, v in as_dict(cfg).items() if k in own})


def changed_params(params_path: Path | str) -> list[ParamChange]:
    """Every key of params.yaml whose value differs from its config's default.

    ``base`` is compared with ``BaseConfig()``; a stage section with the defaults of its
    stage's config class. A section without a stage module is listed whole.
    """
    data = read_params(params_path)
    changes: list[ParamChange] = []
    base = build(BaseConfig, data.get("base"), "base")
    defaults = flatten(as_dict(BaseConfig()))
    for key, value in flatten(as_dict(base)).items():
        if value != defaults.get(key):
            changes.append(ParamChange(f"base.{key}", defaults.get(key), value))
    blank_base = BaseConfig()
    for section, given in data.items():
        if section == "base":
            continue
        cls = stage_config_class(section)
        if cls is None:
            changes += [
                ParamChange(f"{section}.{k}", None, v) for k, v in flatten(given or {}).items()
            ]
            continue
        try:
            actual = _own_fields(_load(cls, section, given, base, data))
            default = _own_fields(_load(cls, section, {}, blank_base, {}))
        except ConfigError as exc:
            changes.append(ParamChange(section, None, f"not readable: {exc}"))
            continue
        for key, value in actual.items():
            if value != default.get(key):
                changes.append(ParamChange(f"{section}.{key}", default.get(key), value))
    return changes


def _load(cls: type, section: str, given: Any, base: BaseConfig, data: dict) -> Any:
    borrowed: dict[str, Any] = {"base": base}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        other = f.metadata.get("section")
        if other:
            borrowed[f.name] = build(
                hints[f.name], data.get(other) or {}, other, given={"base": base}
            )
    return build(cls, given or {}, section, given=borrowed)
