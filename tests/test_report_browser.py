"""The report page in a real browser: headless Chromium opens reports/index.html from disk, as
written by the evaluate stage of a tiny real pipeline run (the six stages on a few sample
photos, plus the Set5 benchmark folder as a second data set), and is checked as a person
would use it: it renders without errors and without fetching anything, its table says what
metrics/evaluate.json says, the slider, toggle and zoom work, and it looks like something.

Set REPORT_SCREENSHOT=path/to.png to keep the screenshot (docs/report.png comes from here).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, ensure_chromium, open_file

from pipelines.imaging.images import read_rgb
from pipelines.reporting.results import methods_of, metrics_of, read_evaluation

from pipeline_repo import TINY, dvc_cli, make_pipeline_repo

pytestmark = pytest.mark.slow

SET5 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "Set5"


@pytest.fixture(scope="session")
def browser_ready():
    reason = ensure_chromium()
    if reason:
        pytest.skip(f"no Chromium for the browser test: {reason}")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A workspace after `dvc repro` of the real pipeline with tiny settings."""
    from tasks.dvc_stage import stage_environment

    params = {k: dict(v) for k, v in TINY.items()}
    if SET5.is_dir():
        params["evaluate"]["hr_dirs"] = [str(SET5)]
    root = tmp_path_factory.mktemp("report")
    env = stage_environment({"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"})
    repo = make_pipeline_repo(root / "repo", params, env=env)
    dvc_cli(repo, "repro", env=env, timeout=1800)
    return repo


def test_report_page_in_a_browser(browser_ready, evaluated, tmp_path):
    report = evaluated / "reports" / "index.html"
    results = read_evaluation(evaluated / "metrics")
    with chromium() as page:
        open_file(page, report)
        # -- renders, with no console error and no request but the page itself ----------------
        assert page.console_errors() == []
        fetched = [
            u
            for u in page.requested_urls()
            if not u.startswith("data:") and u != report.resolve().as_uri()
        ]
        assert fetched == [], f"the page fetched {fetched}"
        assert page.evaluate("document.title") == "Decrappify run report"
        loaded = page.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert loaded, "an image did not decode"

        # -- the table is metrics/evaluate.json ------------------------------------------------
        cells = page.evaluate("""Array.from(document.querySelectorAll('table.evaluation td[data-value]'))
            .map(td => [td.closest('table').dataset.dataset, td.closest('tr').dataset.method,
                        td.dataset.metric, Number(td.dataset.value), td.textContent])""")
        shown = {(d, m, k): v for d, m, k, v, _ in cells}
        expected = {}
        for dataset, res in results.items():
            for method in methods_of(res):
                for metric in metrics_of(res):
                    if metric in res[method]:
                        expected[(dataset, method, metric)] = res[method][metric]
            for model, gain in res.get("gain_db", {}).items():
                expected[(dataset, model, "gain_db")] = gain
        assert shown == expected
        # the test split and Set5, each with crappy and clean inputs
        assert len(results) == 2 * (2 if SET5.is_dir() else 1)
        # the text a person reads is the value, rounded
        for d, m, k, v, text in cells:
            assert text.startswith(f"{v:+.4f}" if k == "gain_db" else f"{v:.4f}"), (d, m, k, text)

        # -- one image viewer per shown image; the slider follows a drag -----------------------
        samples = page.evaluate("document.querySelectorAll('.sample').length")
        assert samples == sum(min(r["images"], 3) for r in results.values())
        labels = page.evaluate(
            "Array.from(document.querySelectorAll('#sample-0 .thumb')).map(t => t.dataset.label)"
        )
        assert labels == ["input", "bicubic", "bilinear", "generator", "gan_generator", "truth"]
        assert page.evaluate("document.querySelector('#sample-0 .left').value") == "bicubic"
        assert page.evaluate("document.querySelector('#sample-0 .right').value") == "gan_generator"
        natural = page.evaluate(
            "[document.querySelector('#sample-0 .under').naturalWidth,"
            " +document.querySelector('#sample-0').dataset.width]"
        )
        assert natural[0] == natural[1]  # shown at full resolution, 1 image px = 1 CSS px
        page.evaluate("document.querySelector('#sample-0 .compare').scrollIntoView()")
        box = page.evaluate(
            "(() => { const r = document.querySelector('#sample-0 .compare')"
            ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"
        )
        left, top, width, height = box
        y = top + min(height, 200) / 2
        page.mouse("mousePressed", left + width * 0.5, y)
        page.mouse("mouseMoved", left + width * 0.35, y)
        page.mouse("mouseMoved", left + width * 0.2, y)
        page.mouse("mouseReleased", left + width * 0.2, y, buttons=0)
        slider = page.evaluate("+document.querySelector('#sample-0 .slider').value")
        assert slider == pytest.approx(20, abs=1.5)
        clip = page.evaluate("document.querySelector('#sample-0 .over').style.clipPath")
        assert re.fullmatch(r"inset\(0(px)? 0(px)? 0(px)? [\d.]+%\)", clip), clip
        assert float(clip.split()[-1].rstrip("%)")) == pytest.approx(20, abs=1.5)
        # the toggle flips to one side, then to the other
        page.evaluate("document.querySelector('#sample-0 .toggle').click()")
        assert page.evaluate("+document.querySelector('#sample-0 .slider').value") == 100
        page.evaluate("document.querySelector('#sample-0 .toggle').click()")
        assert page.evaluate("+document.querySelector('#sample-0 .slider').value") == 0
        # another pair and a zoom
        page.evaluate("""(() => { const s = document.querySelector('#sample-0');
            s.querySelector('.left').value = 'input'; s.querySelector('.left').dispatchEvent(new Event('change'));
            s.querySelector('.zoom').value = '2'; s.querySelector('.zoom').dispatchEvent(new Event('change'));
            s.querySelector('.slider').value = 50; s.querySelector('.slider').dispatchEvent(new Event('input')); })()""")
        src = page.evaluate(
            "[document.querySelector('#sample-0 .under').src === "
            "document.querySelector('#sample-0 .thumb[data-label=input]').src,"
            " document.querySelector('#sample-0 .compare').getBoundingClientRect().width]"
        )
        assert src[0] is True and src[1] == pytest.approx(2 * width, abs=1)

        # -- training curves as SVG, the chosen GAN step marked; provenance ------------------
        charts = page.evaluate(
            "Array.from(document.querySelectorAll('.curves')).map(c => c.dataset.name)"
        )
        assert charts == [
            "gan_scores",
            "pretrain_critic_loss",
            "pretrain_generator",
            "pretrain_generator_loss",
            "train_gan_loss",
        ]
        assert (
            page.evaluate(
                "document.querySelectorAll('.curves[data-name=gan_scores] .chart-marker').length"
            )
            > 0
        )
        provenance = page.evaluate("document.querySelector('#provenance').textContent")
        assert "git commit" in provenance and "dvc.lock sha256" in provenance
        assert "pretrain_generator.phases" in provenance  # a param that differs from its default
        assert page.console_errors() == []

        # -- a screenshot of the top of the page (table and the first image viewer) -----------
        page.evaluate(
            "document.querySelector('#sample-0 .zoom').value = '1';"
            "document.querySelector('#sample-0 .zoom').dispatchEvent(new Event('change'));"
            "document.querySelector('#sample-0 .slider').value = 50;"
            "document.querySelector('#sample-0 .slider').dispatchEvent(new Event('input'));"
            "window.scrollTo(0, 0)"
        )
        shot = page.screenshot(tmp_path / "report.png", full_page=False)
    picture = read_rgb(shot)
    assert picture.shape[:2] == (900, 1280)
    assert np.std(picture) > 20, "the screenshot is blank"
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
