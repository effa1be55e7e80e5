"""The README's screenshots, from a real run: the tiny pipeline (the six real stages on a few
sample photos, scale 2, a few steps; Set5 as a second data set when it is beside the checkout)
run as the training flow against a real `prefect server start`; then headless Chromium
photographs the Prefect flow-run page with its artifacts and the run's report page.

    python tests/make_screenshots.py docs        # writes docs/prefect-run.png, docs/report.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from browser import chromium, ensure_chromium, open_file  # noqa: E402

from local_servers import free_port, service  # noqa: E402
from pipeline_repo import TINY, make_pipeline_repo  # noqa: E402

SET5 = HERE.parents[1] / "shared" / "benchmarks" / "Set5"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for prefect-run.png and report.png")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="work in DIR and keep it (the workspace, stores, logs); given a "
        "DIR kept before, photograph its run again",
    )
    args = parser.parse_args()
    reason = ensure_chromium()
    if reason:
        print(f"no screenshots: {reason}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.nullcontext(str(args.keep))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="decrappify-shots-")
    ) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        params = {k: dict(v) for k, v in TINY.items()}
        if SET5.is_dir():
            params["evaluate"]["hr_dirs"] = [str(SET5)]
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": str(tmp / "prefect"),
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        }
        repo = tmp / "repo"
        done = (repo / "reports" / "index.html").exists()  # a kept run: photograph it again
        if not done:
            (tmp / "prefect").mkdir()
            make_pipeline_repo(repo, params, env=env)
        with service(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            tmp / "prefect",
            f"{api}/health",
            env,
            timeout=180,
        ):
            if not done:
                started = time.monotonic()
                subprocess.run(
                    [sys.executable, "-m", "flows.cli", "run", "--root", str(repo)],
                    cwd=HERE.parent,
                    env=env,
                    check=True,
                    timeout=3600,
                )
                print(f"flow run: {time.monotonic() - started:.0f} s")
            flow_run_id = _last_flow_run(api)
            with chromium(1440, 1700) as page:
                page.send(
                    "Page.navigate", url=f"http://127.0.0.1:{port}/runs/flow-run/{flow_run_id}"
                )
                page.wait_for("Page.loadEventFired")
                tab = (
                    "[...document.querySelectorAll('*')].filter(e => !e.children.length"
                    " && e.textContent.trim() === 'Artifacts')"
                )
                end = time.monotonic() + 60  # the UI renders after loading
                while not page.evaluate(f"{tab}.length") and time.monotonic() < end:
                    time.sleep(1)
                time.sleep(5)  # the run graph
                page.evaluate(f"{tab}.forEach(e => e.click())")
                time.sleep(6)  # the artifact cards
                page.screenshot(args.out / "prefect-run.png", full_page=False)
            with chromium(1280, 1500) as page:
                open_file(page, repo / "reports" / "index.html")
                page.screenshot(args.out / "report.png", full_page=False)
    print(f"wrote {args.out / 'prefect-run.png'} and {args.out / 'report.png'}")
    return 0


def _last_flow_run(api: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as c:
        [run] = c.read_flow_runs(limit=1)
    return str(run.id)


if __name__ == "__main__":
    raise SystemExit(main())
