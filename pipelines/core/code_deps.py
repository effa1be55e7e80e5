"""The project modules a stage runs, found from its source, and one digest of their code.

One walker serves two checks that must agree: tests/test_code_deps.py holds every module it
finds against the stage's ``deps`` in dvc.yaml (so DVC reruns a stage when its code changes),
and ``code_digest`` feeds the resume fingerprint (so a rerun after a code change does not
resume a checkpoint the old code made). ``paths_named`` reads the same modules for the
``base.paths`` folders they name: the path params dvc.yaml lists for the stage. The walk reads
``import`` statements anywhere in a module, inside functions too, and follows them through
project modules only (files below the repository root); it never imports anything.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Project modules that cannot change a stage's outputs: they parse the command line and
# report (MLflow runs, the model registry). Modules only they import are not followed.
# Everything else a stage imports is a dvc.yaml dep and part of the code digest.
CANNOT_CHANGE_OUTPUTS = frozenset(
    {
        "pipelines.running.stage",  # main(): arguments, params loading, exit codes
        "pipelines.running.tracking",  # MLflow runs: params, metrics, images, models
        "pipelines.running.registry",  # MLflow model registry tags and aliases
    }
)


def stage_module(stage: str) -> str:
    """The module dvc.yaml runs for ``stage`` (``python -m pipelines.<stage>``)."""
    return f"pipelines.{stage}"


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The file of project module ``name`` below ``root`` (default ``ROOT``), or None when it
    is not one."""
    base = (root or ROOT).joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Dotted names a module's import statements may load (modules or attributes of them)."""
    names: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                origin = ".".join(parts + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    return names


def _with_packages(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_modules(entry: str, root: Path | None = None) -> dict[str, Path]:
    """Every project module that running module ``entry`` may execute, with its file.

    Includes ``entry`` and the non-empty packages above each module; a module on
    ``CANNOT_CHANGE_OUTPUTS`` is listed but not followed.
    """
    root = root or ROOT
    found: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        for module in _with_packages(name):
            if module in found:
                continue
            path = module_file(module, root)
            if path is None:
                continue
            tree = ast.parse(path.read_bytes(), filename=str(path))
            if not tree.body:
                continue  # an empty package __init__ runs nothing
            found[module] = path
            if module in CANNOT_CHANGE_OUTPUTS:
                continue
            todo.extend(_imported_names(tree, module, path.name == "__init__.py"))
    if entry not in found:
        raise ModuleNotFoundError(f"{entry}: no such module below {root}")
    return dict(sorted(found.items()))


def result_modules(entry: str, root: Path | None = None) -> dict[str, Path]:
    """The modules of ``imported_modules`` whose code can change the outputs."""
    return {
        m: p for m, p in imported_modules(entry, root).items() if m not in CANNOT_CHANGE_OUTPUTS
    }


def code_digest(entry: str, root: Path | None = None) -> str:
    """sha256 over the path and source of every module in ``result_modules(entry)``."""
    root = root or ROOT
    h = hashlib.sha256()
    for path in result_modules(entry, root).values():
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
    return h.hexdigest()


# How the stages name their folders: ``cfg.base.paths.hr`` (a field of config.Paths)
_PATH_FIELD = re.compile(r"\bpaths\.([a-z_]+)\b")


def paths_named(entry: str, root: Path | None = None) -> set[str]:
    """The ``base.paths`` fields that the modules ``entry`` runs name: the folders it can read
    or write, so the only path params that can change what it does."""
    return {
        m
        for path in imported_modules(entry, root).values()
        for m in _PATH_FIELD.findall(path.read_text())
    }


# Where the project's code lives: a commit that only records results (dvc.lock, metrics/)
# does not change which code made them.
CODE_FOLDERS = ("pipelines", "flows", "tasks")


def code_commit(root: Path | None = None) -> str | None:
    """The last commit that changed the project's code, with ``-dirty`` when code files differ
    from it; None outside git. Outputs that record it are the same after a commit of results."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root or ROOT), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%H", "--", *CODE_FOLDERS)
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_FOLDERS)
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) if commit else None
