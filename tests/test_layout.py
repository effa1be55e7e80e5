"""The stages read from the top: each ``pipelines/<stage>.py`` is a leaf (no stage imports
another; what they share lives in the subpackages) and stays short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.core.code_deps import stage_module
from pipelines.running.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def stage_file(stage: str) -> Path:
    return ROOT / (stage_module(stage).replace(".", "/") + ".py")


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_stage_files_are_the_stages():
    assert STAGES and all(stage_file(s).is_file() for s in STAGES)
    top = {p.stem for p in (ROOT / "pipelines").glob("*.py")} - {"__init__"}
    assert top == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another(stage):
    others = {stage_module(s) for s in STAGES if s != stage}
    tree = ast.parse(stage_file(stage).read_text())
    assert imported(tree) & others == set()


@pytest.mark.parametrize("stage", STAGES)
def test_stage_functions_are_short(stage):
    tree = ast.parse(stage_file(stage).read_text())
    long = {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}
