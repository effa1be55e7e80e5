"""Small real DVC repositories for the orchestration tests: git + DVC, stages of a few lines.

The stages are named like the real pipeline's so the flow's per-stage policy (retries on
``download``, the ``gpu`` tag on ``train_gan``) applies to them, and each opens its MLflow
run through ``pipelines.running.tracking.Tracker`` as the real stages do.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from pipeline_repo import commit_repo

STEPS = """\
import json
import sys
from pathlib import Path

import yaml

from pipelines.running.tracking import Tracker

stage = sys.argv[1]
params = yaml.safe_load(open("params.yaml")).get(stage, {})
with Tracker(stage) as tracker:
    tracker.log_params(params)
    if stage == "download":
        Path("hr.txt").write_text("x" * params["n"])
        Path("metrics").mkdir(exist_ok=True)
        Path("metrics/download.json").write_text(json.dumps({"bytes": params["n"]}))
    elif stage == "crappify":
        if params["fail"]:
            print("crappify: refusing on purpose", file=sys.stderr)
            sys.exit(3)
        Path("lr.txt").write_text(Path("hr.txt").read_text()[:: params["factor"]])
    elif stage == "train_gan":
        Path("checkpoints/train_gan").mkdir(parents=True, exist_ok=True)
        Path("checkpoints/train_gan/last.json").write_text(json.dumps(params))
        Path("model.txt").write_text(Path("lr.txt").read_text() * params["steps"])
        Path("metrics").mkdir(exist_ok=True)
        Path("metrics/train_gan.json").write_text(json.dumps({"steps": params["steps"]}))
    print(f"{stage} done")
"""

PARAMS = """\
# one section per stage, as in the real params.yaml
download:
  n: 8
crappify:
  factor: 2
  fail: false
train_gan:
  steps: 2
"""

DVC_YAML = """\
stages:
  download:
    cmd: python steps.py download
    deps: [steps.py]
    params: [download]
    outs: [hr.txt]
    metrics:
      - metrics/download.json:
          cache: false
  crappify:
    cmd: python steps.py crappify
    deps: [steps.py, hr.txt]
    params: [crappify]
    outs: [lr.txt]
  train_gan:
    cmd: python steps.py train_gan
    deps: [steps.py, lr.txt]
    params: [train_gan]
    outs: [model.txt]
    metrics:
      - metrics/train_gan.json:
          cache: false
"""

# A stage that starts a child and waits on it: stopping only the direct child would leave
# the sleeper behind.
SLEEPER_DVC_YAML = """\
stages:
  train_gan:
    cmd: >-
      python -c "import os, subprocess; child = subprocess.Popen(['sleep', '300']);
      open('pids.txt', 'w').write(f'{os.getpid()} {child.pid}'); print('sleeping', flush=True);
      child.wait()"
    outs: [never.txt]
"""

# A training stage that records when it started and ended; always rerun.
INTERVAL_DVC_YAML = """\
stages:
  train_gan:
    cmd: >-
      python -c "import json, time; start = time.time(); time.sleep(3);
      json.dump([start, time.time()], open('interval.json', 'w'))"
    always_changed: true
    outs:
      - interval.json:
          cache: false
"""


def make_repo(
    path: Path, dvc_yaml: str = DVC_YAML, params: str = PARAMS, files: dict[str, str] | None = None
) -> Path:
    """A committed git + DVC repository at ``path`` holding ``dvc_yaml`` and ``params``."""
    files = {"dvc.yaml": dvc_yaml, "params.yaml": params, "steps.py": STEPS, **(files or {})}
    return commit_repo(
        path,
        {k: textwrap.dedent(v) for k, v in files.items()},
        gitignore="mlflow.db\npids.txt\n/checkpoints/\n",
        message="tiny pipeline",
    )
