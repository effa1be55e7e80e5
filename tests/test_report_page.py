"""The report page's building blocks without a browser: the evaluation read generically, the
page self-contained, the curves, the params that differ from the defaults, `decrappify report`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from flows.cli import main
from pipelines.reporting import charts
from pipelines.reporting.page import (
    REPORT_NAME,
    Samples,
    build_page,
    samples_table,
    write_report,
)
from pipelines.reporting.provenance import changed_params
from pipelines.reporting.results import read_evaluation, table_rows

# Another layout than today's stage writes: a metric the page has never heard of, two kinds
# of data set, a baseline that is not bicubic. Nothing may be dropped.
RESULTS = {
    "test": {
        "images": 3,
        "bicubic": {"psnr_y": 26.3233, "stlpips": 0.31, "gmsd": 0.15},
        "lanczos": {"psnr_y": 26.5, "stlpips": 0.3, "gmsd": 0.149},
        "gan_generator": {"psnr_y": 27.3651, "stlpips": 0.25, "gmsd": 0.1467},
        "gain_db": {"gan_generator": 1.0418},
    },
    "Set5-clean": {
        "images": 5,
        "bicubic": {"psnr_y": 30.1, "stlpips": 0.2},
        "gan_generator": {"psnr_y": 29.0, "stlpips": 0.22},
        "gain_db": {"gan_generator": -1.1},
    },
}


def photo(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_report_table_rows_hold_every_method_metric_and_gain():
    rows = table_rows(RESULTS)
    assert [(r["dataset"], r["method"]) for r in rows] == [
        ("test", "bicubic"),
        ("test", "lanczos"),
        ("test", "gan_generator"),
        ("Set5-clean", "bicubic"),
        ("Set5-clean", "gan_generator"),
    ]
    gan = rows[2]
    assert gan["stlpips"] == 0.25 and gan["stlpips_gain"] == pytest.approx(-0.06)
    assert gan["gain_db"] == 1.0418 and gan["psnr_y_gain"] == pytest.approx(1.0418)
    assert rows[0]["psnr_y_gain"] is None and rows[3]["images"] == 5


def test_read_evaluation_names_the_file_when_missing_or_broken(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluate.json"):
        read_evaluation(tmp_path)
    (tmp_path / "evaluate.json").write_text("{nope")
    with pytest.raises(ValueError, match="evaluate.json: not valid JSON"):
        read_evaluation(tmp_path)


def test_report_page_is_self_contained_and_shows_every_value():
    samples = Samples(scale=2, crop=16)
    hr = photo(20, 30, 0)
    samples.add(
        "test",
        "a.png",
        photo(10, 15, 1),
        {"bicubic": photo(20, 30, 2), "gan_generator": photo(20, 30, 3)},
        hr,
    )
    rows = [{"dataset": "test", "image": "a.png", "method": "bicubic", "psnr_y": 20.0}]
    curves = [charts.Curves("gan_scores", [0, 2, 4], {"haarpsi": [0.5, 0.6, 0.55]})]
    html = build_page(RESULTS, samples.items, rows, curves, [], {"git commit": "abc"}, 2)
    # nothing to fetch: no external URL, every image inline
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert "<link" not in html and "<script src" not in html
    assert html.count('src="data:image/png;base64,') == 4  # input, 2 methods, truth
    for res in RESULTS.values():
        for method, values in res.items():
            if isinstance(values, dict) and method != "gain_db":
                for metric, value in values.items():
                    assert re.search(rf'data-metric="{metric}" data-value="{value!r}"', html)
    assert 'data-value="-1.1">-1.1000' in html
    assert "stlpips &darr;" in html and "gmsd &darr;" in html and "psnr_y &darr;" not in html
    assert "chosen step 2" in html and 'class="chart-marker"' in html
    # the region is the centre 16x16 crop, at full resolution
    assert samples.items[0].size == (16, 16) and samples.items[0].region == (2, 7)


def test_samples_keep_a_few_per_dataset_and_check_sizes():
    samples = Samples(scale=2, per_dataset=1, crop=8)
    lr, hr = photo(4, 4, 0), photo(8, 8, 1)
    samples.add("test", "a", lr, {"bicubic": hr}, hr)
    samples.add("test", "b", lr, {"bicubic": hr}, hr)
    assert [s.image for s in samples.items] == ["a"]
    with pytest.raises(ValueError, match="bicubic is"):
        samples.add("other", "c", lr, {"bicubic": photo(6, 8, 2)}, hr)
    table = samples_table(
        samples,
        [
            {"dataset": "test", "image": "a", "method": "bicubic", "psnr_y": 30.0},
            {"dataset": "test", "image": "b", "method": "bicubic", "psnr_y": 31.0},
        ],
    )
    assert table["psnr_y"] == [30.0] and table["restoration"][0].shape == (8, 8, 3)
    assert np.array_equal(table["restoration"][0], hr)


def test_curves_are_read_from_csv_and_drawn_as_svg(tmp_path):
    (tmp_path / "train_gan_loss.csv").write_text(
        "step,gen_loss,critic_loss\n2,0.5,nan\n4,0.4,0.7\n"
    )
    (tmp_path / "notes.csv").write_text("name,value\na,1\n")  # no step column: skipped
    [curves] = charts.read_all(tmp_path)
    assert curves.name == "train_gan_loss" and curves.x == [2.0, 4.0]
    svg = charts.line_chart(curves.x, curves.series["critic_loss"], "critic")
    assert svg.startswith("<svg") and svg.count("<circle") == 1  # the nan point is left out
    assert "no values" in charts.line_chart([1], [float("nan")], "empty")


def test_changed_params_are_those_that_differ_from_the_config_defaults(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["train_gan"]["lr"] = 0.123
    params["base"]["seed"] = 43
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    changes = {c.key: (c.default, c.value) for c in changed_params(path)}
    assert changes["train_gan.lr"][1] == 0.123 and changes["base.seed"] == (42, 43)
    assert (
        "train_gan.steps" not in changes
        or changes["train_gan.steps"][0] != changes["train_gan.steps"][1]
    )
    assert not any(
        k.startswith("train_gan.base") or k.startswith("train_gan.crappify") for k in changes
    )


def test_report_command_prints_the_path_or_says_what_to_run(tmp_path, capsys, monkeypatch):
    page = tmp_path / "reports" / REPORT_NAME
    assert main(["report", "--root", str(tmp_path)]) == 1
    assert "run the evaluate stage" in capsys.readouterr().err
    write_report(page, RESULTS, None, root=tmp_path)
    assert main(["report", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(page.resolve())
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert main(["report", "--root", str(tmp_path), "--open"]) == 0
    assert opened == [page.resolve().as_uri()]
    html = page.read_text()
    assert "not a git checkout" in html and json.dumps(0.31) in html


def test_report_command_follows_the_reports_path_of_params(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"base": {"paths": {"reports": "out/pages"}}})
    )
    write_report(tmp_path / "reports" / REPORT_NAME, RESULTS, None, root=tmp_path)
    assert main(["report", "--root", str(tmp_path)]) == 1  # not the default folder's page
    assert "out/pages/index.html does not exist yet" in capsys.readouterr().err
    write_report(tmp_path / "out" / "pages" / REPORT_NAME, RESULTS, None, root=tmp_path)
    assert main(["report", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "out/pages" / REPORT_NAME).resolve())
    (tmp_path / "params.yaml").unlink()
    (tmp_path / "params.yaml").mkdir()  # unreadable as a file, even to root
    assert main(["report", "--root", str(tmp_path)]) == 1
    assert "params.yaml unreadable" in capsys.readouterr().err
