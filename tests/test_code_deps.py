"""dvc.yaml names what each stage computes from: every module it runs that can change its
outputs (found by walking its imports), and exactly the params keys of its config fields but
those that only say how it runs."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.core import code_deps
from pipelines.core.code_deps import (
    CANNOT_CHANGE_OUTPUTS,
    code_digest,
    imported_modules,
    paths_named,
    stage_module,
)
from pipelines.core.fingerprint import HOW_IT_RUNS, result_params

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = list(DVC["stages"])


def config_class(stage: str) -> type:
    module = importlib.import_module(stage_module(stage))
    wanted = stage.replace("_", "") + "config"
    return next(v for k, v in vars(module).items() if k.lower() == wanted)


def is_dep(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_runs_is_a_dep_or_cannot_change_its_outputs(stage):
    spec = DVC["stages"][stage]
    assert spec["cmd"] == f"python -m {stage_module(stage)}"
    missing = [
        f"{module} ({path.relative_to(ROOT)})"
        for module, path in imported_modules(stage_module(stage)).items()
        if module not in CANNOT_CHANGE_OUTPUTS
        and not is_dep(path.relative_to(ROOT).as_posix(), spec["deps"])
    ]
    assert not missing, (
        f"{stage} runs modules that are not among its dvc.yaml deps (add "
        f"them, or name them in code_deps.CANNOT_CHANGE_OUTPUTS): {missing}"
    )


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_files_the_stage_runs(stage):
    """No stale deps: each code dep holds at least one module the stage runs."""
    files = [
        p.relative_to(ROOT).as_posix()
        for p in code_deps.result_modules(stage_module(stage)).values()
    ]
    code = [d for d in DVC["stages"][stage]["deps"] if d.startswith("pipelines")]
    assert code != ["pipelines"], "the whole package reruns every stage on any edit"
    unused = [d for d in code if not any(is_dep(f, [d]) for f in files)]
    assert not unused, f"{stage}: deps it does not run: {unused}"


@pytest.mark.parametrize("stage", STAGES)
def test_params_deps_are_the_config_fields_but_how_it_runs(stage):
    listed = DVC["stages"][stage]["params"]
    assert len(listed) == len(set(listed))
    named = paths_named(stage_module(stage))
    assert sorted(listed) == sorted(result_params(config_class(stage), stage, named))
    assert not [k for k in listed if k.rsplit(".", 1)[-1] in HOW_IT_RUNS]


@pytest.mark.parametrize("params_file", sorted(p.name for p in ROOT.glob("params*.yaml")))
def test_params_deps_exist_in_the_params_files(params_file):
    """DVC refuses to run a stage whose params key is missing from params.yaml."""
    params = yaml.safe_load((ROOT / params_file).read_text())
    for stage in STAGES:
        for key in DVC["stages"][stage]["params"]:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{stage}: {key} not in params.yaml"
                node = node[part]


def test_a_path_param_reruns_only_the_stages_that_name_it():
    """Where the report page goes concerns evaluate alone, and no stage reruns when the resume
    checkpoints or the timing logs move."""
    naming = {s for s in STAGES if "base.paths.reports" in DVC["stages"][s]["params"]}
    assert naming == {"evaluate"}
    assert all("base.paths.hr" in DVC["stages"][s]["params"] for s in ("download", "evaluate"))
    listed = {k for s in STAGES for k in DVC["stages"][s]["params"]}
    assert not {"base.paths", "base.paths.checkpoints", "base.paths.logs"} & listed


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_walker_follows_imports_in_functions_and_relative_ones(tmp_path):
    write(tmp_path, "pipelines/__init__.py", "")
    write(
        tmp_path,
        "pipelines/stage.py",
        "import os\nfrom pipelines.core import a\n\n\ndef run():\n"
        "    from .core.b import thing\n    import pipelines.running.stage\n",
    )
    write(tmp_path, "pipelines/core/__init__.py", '"""Docstring only: runs nothing."""\n')
    write(tmp_path, "pipelines/core/a.py", "from . import c\n")
    write(tmp_path, "pipelines/core/b.py", "thing = 1\n")
    write(tmp_path, "pipelines/core/c.py", "x = 1\n")
    write(tmp_path, "pipelines/running/__init__.py", "")
    write(tmp_path, "pipelines/running/stage.py", "import pipelines.hidden\n")
    write(tmp_path, "pipelines/hidden.py", "x = 1\n")
    write(tmp_path, "pipelines/unused.py", "x = 1\n")
    found = imported_modules("pipelines.stage", tmp_path)
    # the docstring-only package is listed: it has a statement; empty __init__ files are not
    assert set(found) == {
        "pipelines.stage",
        "pipelines.core",
        "pipelines.core.a",
        "pipelines.core.b",
        "pipelines.core.c",
        "pipelines.running.stage",
    }
    assert found["pipelines.core.c"] == tmp_path / "pipelines/core/c.py"
    with pytest.raises(ModuleNotFoundError, match="pipelines.nothing"):
        imported_modules("pipelines.nothing", tmp_path)


@pytest.fixture
def code_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the pipelines package that the code digest reads instead of this one."""
    shutil.copytree(
        ROOT / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(code_deps, "ROOT", tmp_path)
    return tmp_path


def test_the_code_digest_follows_every_module_that_changes_results(code_copy):
    before = code_digest("pipelines.pretrain_generator")
    with open(code_copy / "pipelines/training/schedule.py", "a") as f:
        f.write("# an edit\n")
    after = code_digest("pipelines.pretrain_generator")
    assert after != before
    with open(code_copy / "pipelines/running/tracking.py", "a") as f:
        f.write("# MLflow logging cannot change the outputs\n")
    assert code_digest("pipelines.pretrain_generator") == after
    # evaluate runs no schedule: the edit does not concern it
    assert "pipelines.training.schedule" not in imported_modules("pipelines.evaluate")
