"""Params validation: every bad value fails before any work, naming the key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipelines.core.config import BaseConfig, ConfigError, bounded, build, load, section


@dataclass(frozen=True)
class Inner:
    size: int = bounded(4, lo=1)


@dataclass(frozen=True)
class Other:
    base: BaseConfig
    level: int = bounded(1, lo=0, hi=9)


@dataclass(frozen=True)
class Stage:
    base: BaseConfig
    other: Other = section("other")
    quality: tuple[int, int] = bounded((10, 70), lo=1, hi=100)
    mode: Literal["a", "b"] = "a"
    rate: float = bounded(0.5, lo=0, hi=1)
    inner: Inner = field(default_factory=Inner)
    phases: tuple[Inner, ...] = (Inner(),)


def params(**stage):
    return {"base": {"seed": 1}, "stage": stage, "other": {}}


def test_defaults_and_injected_sections():
    cfg = load(Stage, "stage", params())
    assert cfg.base.seed == 1 and cfg.quality == (10, 70) and cfg.other.level == 1
    assert cfg.other.base is cfg.base or cfg.other.base == cfg.base


def test_values_are_coerced_and_frozen():
    cfg = load(Stage, "stage", params(quality=[20, 30], rate=1, phases=[{"size": 2}, {"size": 3}]))
    assert cfg.quality == (20, 30) and isinstance(cfg.rate, float)
    assert [p.size for p in cfg.phases] == [2, 3]
    with pytest.raises(AttributeError):
        cfg.rate = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"qualty": [1, 2]}, "stage.qualty: unknown key"),
        ({"quality": [0, 70]}, "stage.quality: (0, 70) is out of range [1, 100]"),
        ({"quality": [10, 170]}, "stage.quality"),
        ({"quality": "high"}, "stage.quality: expected a list"),
        ({"quality": [10]}, "stage.quality: expected 2 items"),
        ({"quality": [10, "x"]}, "stage.quality[1]: expected an integer"),
        ({"mode": "c"}, "stage.mode: 'c' is not one of 'a', 'b'"),
        ({"rate": "fast"}, "stage.rate: expected a number"),
        ({"rate": True}, "stage.rate: expected a number"),
        ({"inner": {"size": -3}}, "stage.inner.size: -3 is out of range"),
        ({"phases": [{"size": 2}, {"sise": 3}]}, "stage.phases[1].sise: unknown key"),
    ],
)
def test_bad_values_name_the_key(stage, message):
    with pytest.raises(ConfigError) as err:
        load(Stage, "stage", params(**stage))
    assert message in str(err.value)


def test_base_rules():
    with pytest.raises(ConfigError, match=r"base.scale: 3 must be a power of two"):
        load(Stage, "stage", {"base": {"scale": 3}, "stage": {}, "other": {}})
    with pytest.raises(ConfigError, match=r"base.crop: 130 is not divisible by scale 4"):
        load(Stage, "stage", {"base": {"crop": 130}, "stage": {}, "other": {}})
    with pytest.raises(ConfigError, match=r"base.device: 'tpu' is not one of"):
        load(Stage, "stage", {"base": {"device": "tpu"}, "stage": {}, "other": {}})
    with pytest.raises(ConfigError, match=r"base.paths.hrr: unknown key"):
        load(Stage, "stage", {"base": {"paths": {"hrr": "x"}}, "stage": {}, "other": {}})


def test_missing_sections():
    with pytest.raises(ConfigError, match="stage: missing section"):
        load(Stage, "stage", {"base": {}, "other": {}})
    with pytest.raises(ConfigError, match=r"other: missing section in params \(needed by stage\)"):
        load(Stage, "stage", {"base": {}, "stage": {}})


def test_overrides_apply_like_dvc_exp_set():
    cfg = load(Stage, "stage", params(), overrides={"stage.rate": 0.25, "base.seed": 7})
    assert cfg.rate == 0.25 and cfg.base.seed == 7


def test_build_rejects_non_mapping():
    with pytest.raises(ConfigError, match="inner: expected a mapping"):
        build(Inner, [1, 2], "inner")


def test_real_params_file_loads(repo_root):

    import yaml

    load_every_stage(repo_root, yaml.safe_load((repo_root / "params.yaml").read_text()))


def test_recipe_params_file_loads(repo_root):

    import yaml

    data = yaml.safe_load((repo_root / "params-recipe.yaml").read_text())
    defaults = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert data.keys() == defaults.keys()
    load_every_stage(repo_root, data)


def load_every_stage(repo_root, data: dict) -> None:
    """Every stage of dvc.yaml validates its section of ``data``."""
    import importlib

    import yaml

    for name in yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]:
        module = importlib.import_module(f"pipelines.{name}")
        cls = next(
            v
            for k, v in vars(module).items()
            if k.endswith("Config") and k.lower().startswith(name.replace("_", ""))
        )
        load(cls, name, data)


def leaves(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_colorize_params_file_is_the_defaults_but_the_keys_its_header_names(repo_root):
    import re

    import yaml

    text = (repo_root / "params-colorize.yaml").read_text()
    data, defaults = yaml.safe_load(text), yaml.safe_load((repo_root / "params.yaml").read_text())
    load_every_stage(repo_root, data)
    ours, theirs = leaves(data), leaves(defaults)
    assert ours.keys() == theirs.keys()
    changed = {k for k in ours if ours[k] != theirs[k]}
    header = text[: text.index("cp params-colorize.yaml")]  # its opening comment
    named = {k for k in ours if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", header)}
    assert changed and changed == named


def test_cli_overrides_read_exponent_floats_like_dvc_writes_them():
    from pipelines.running.stage import parse_overrides

    assert parse_overrides(["train_gan.lr=1e-05", "a.b=[1, 2]", "c=text"]) == {
        "train_gan.lr": 1e-05,
        "a.b": [1, 2],
        "c": "text",
    }


def test_sun80_params_file_is_the_defaults_on_a_folder(repo_root):
    import yaml

    data = yaml.safe_load((repo_root / "params-sun80.yaml").read_text())
    defaults = yaml.safe_load((repo_root / "params.yaml").read_text())
    # 60 training photos hold more to learn than 12 (at the lr measured best for 5600 steps),
    # at their own scale, crops placed without regard to their text; the header says so
    assert data["pretrain_generator"].pop("phases") == [
        {**defaults["pretrain_generator"].pop("phases")[0], "steps": 7200, "lr": 0.001}
    ]
    for stage in ("pretrain_generator", "train_gan"):
        assert data[stage].pop("zoom") == [1.0, 1.0] != defaults[stage].pop("zoom")
        assert data[stage].pop("watermark_focus") == 0 != defaults[stage].pop("watermark_focus")
    assert {k: v for k, v in data.items() if k not in ("download", "evaluate")} == {
        k: v for k, v in defaults.items() if k not in ("download", "evaluate")
    }
    assert data["download"]["source"] == "folder"
    # relative to the repository root, where DVC runs the stages
    assert data["download"]["folder"] == "../shared/datasets/Sun80"
    assert data["evaluate"] == {**defaults["evaluate"], "hr_dirs": ["../shared/benchmarks/Set5"]}


@pytest.mark.parametrize("stage", ["pretrain_generator", "train_gan"])
def test_text_weight_needs_fresh_crops_and_a_pixel_loss(stage, repo_root):
    from pipelines.pretrain_generator import PretrainGeneratorConfig
    from pipelines.train_gan import TrainGanConfig

    cls = {"pretrain_generator": PretrainGeneratorConfig, "train_gan": TrainGanConfig}[stage]
    loss = {"pretrain_generator": "loss", "train_gan": "content"}[stage]
    params = repo_root / "params.yaml"
    weighted = {f"{stage}.text_weight": 4}
    with pytest.raises(ConfigError, match=r"text_weight: 4.0 needs data: fresh"):
        load(cls, stage, params, {**weighted, f"{stage}.data": "fixed", f"{stage}.zoom": [1, 1]})
    with pytest.raises(ConfigError, match=r"text_weight: 4.0 weighs a pixel loss .* not 'feature'"):
        load(cls, stage, params, {**weighted, f"{stage}.{loss}": "feature"})
    assert load(cls, stage, params, weighted).text_weight == 4


@pytest.mark.parametrize("stage", ["pretrain_generator", "train_gan"])
def test_watermark_focus_needs_a_text_window(stage, repo_root):
    from pipelines.pretrain_generator import PretrainGeneratorConfig
    from pipelines.train_gan import TrainGanConfig

    cls = {"pretrain_generator": PretrainGeneratorConfig, "train_gan": TrainGanConfig}[stage]
    overrides = {f"{stage}.watermark_window": 0, f"{stage}.watermark_focus": 0.5}
    with pytest.raises(ConfigError, match=r"watermark_focus: 0.5 needs a text window"):
        load(cls, stage, repo_root / "params.yaml", overrides)
    focused = load(cls, stage, repo_root / "params.yaml", {f"{stage}.watermark_focus": 0.5})
    assert focused.watermark_focus == 0.5 and focused.watermark_window > 0


@pytest.mark.parametrize("stage", ["pretrain_generator", "train_gan"])
def test_zoom_is_a_range_within_one_and_needs_fresh_data(stage, repo_root):
    from pipelines.pretrain_generator import PretrainGeneratorConfig
    from pipelines.train_gan import TrainGanConfig

    cls = {"pretrain_generator": PretrainGeneratorConfig, "train_gan": TrainGanConfig}[stage]
    params = repo_root / "params.yaml"
    for bad in ([0.8, 0.5], [0.0, 1.0], [0.5, 1.5]):
        with pytest.raises(ConfigError, match=r"zoom: \[.*\] must be \[lo, hi\]"):
            load(cls, stage, params, {f"{stage}.zoom": bad})
    with pytest.raises(ConfigError, match=r"zoom: \[0.5, 1.0\] needs data: fresh \(here fixed\)"):
        load(cls, stage, params, {f"{stage}.zoom": [0.5, 1.0], f"{stage}.data": "fixed"})
    assert load(cls, stage, params, {f"{stage}.zoom": [0.5, 1.0]}).zoom == (0.5, 1.0)
