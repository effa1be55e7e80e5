"""The MLflow model registry: evaluation scores on generator versions, and the champion alias.

train_gan registers the generator it chose as a new version of ``decrappify-generator`` and
tags its run with the sha256 of ``models/gan_generator.pt``. After scoring, evaluate looks up
the version(s) whose run carries the digest of the file it just evaluated: the match is by
content, not recency, so it holds when DVC restored train_gan from its run-cache, when an
experiment trained another generator in between, or when stages ran without a flow.

Each matched version gets the scores of the first evaluated data set as tags
(``decrappify.eval.*``) and ``decrappify.eval.qualified`` = true when its gain over the
task's reference (bicubic; gray for a colorizer) is positive and, against every other
generator evaluated with it (the pretrained one), either larger or the trade the GAN phase
chose it by (``Trade``: train_gan's ``max_psnr_drop`` and ``select_metric``, read from its
metrics file): at most that many dB smaller and better by that metric. The ``champion``
alias then goes to the qualified version with the highest gain (the newest on ties), taking
each version's latest evaluation; it is removed when no version qualifies. Gains are over the
reference on the images each version was evaluated on, so versions evaluated on different
test splits compare only roughly: re-run evaluate after changing data.

A registry that cannot be reached costs one warning; it never fails the stage.

DVC skips stages whose outputs match dvc.lock (a fresh clone that pulled the models, a
rerun that changed nothing), and then neither train_gan registers nor evaluate tags. So
``decrappify register`` (``make pipeline`` runs it after ``dvc repro``) does both from the
files in the checkout: ``register_file`` logs models/gan_generator.pt unless a version with its
digest exists, and ``record_evaluation`` applies metrics/evaluate.json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.files import sha256_file
from pipelines.core.results import results_file
from pipelines.core.tasks import REGISTERED_MODEL as REGISTERED_MODELS
from pipelines.running.tracking import fail_fast
from pipelines.scoring.metrics import beats

log = logging.getLogger(__name__)

# the restorers' name; a colorizer's versions go to their own (pipelines/core/tasks.py)
REGISTERED_MODEL = REGISTERED_MODELS["restore"]
CHAMPION = "champion"
# run tag set by train_gan: sha256 of the model file whose network the run registered
DIGEST_TAG = "decrappify.model_sha256"
EVAL_PREFIX = "decrappify.eval."
GAIN_TAG = EVAL_PREFIX + "gain_db"
QUALIFIED_TAG = EVAL_PREFIX + "qualified"


def record_evaluation(
    tracking_uri: str,
    dataset: str,
    summary: Mapping[str, Any],
    model_files: Mapping[str, Path | str],
    evaluation_run: str | None = None,
    name: str = REGISTERED_MODEL,
    trade: Trade | None = None,
) -> str | None:
    """Tag the registered versions of the evaluated model files, then move the champion alias.

    ``summary`` is evaluate's result for ``dataset`` (means per method and ``gain_db`` per
    model); ``model_files`` maps each evaluated model's name to its file; ``trade`` is the
    GAN phase's (``trade_of``). Returns the champion version, or None (no champion, or the
    registry was unavailable).
    """
    fail_fast()
    try:
        from mlflow import MlflowClient

        return _record(
            MlflowClient(tracking_uri=tracking_uri),
            dataset,
            summary,
            model_files,
            evaluation_run,
            name,
            trade,
        )
    except Exception as exc:  # the registry is a convenience: evaluation results are on disk
        text = str(exc).splitlines()[0] if str(exc) else ""
        log.warning(
            "MLflow model registry unavailable at %s (%s: %s); versions not tagged, "
            "alias %r not updated.",
            tracking_uri,
            type(exc).__name__,
            text,
            CHAMPION,
        )
        return None


@dataclass(frozen=True)
class Trade:
    """What the GAN phase may give up for perceptual quality: ``max_drop`` dB of PSNR for a
    better ``metric`` (train_gan's ``max_psnr_drop`` and ``select_metric``)."""

    metric: str
    max_drop: float


def trade_of(metrics_dir: Path | str) -> Trade | None:
    """The trade recorded in train_gan's results in ``metrics_dir``; None when the file or its
    keys are missing (a run from before it was recorded is held to the strict rule)."""
    try:
        data = json.loads(results_file(metrics_dir, "train_gan").read_text())
        return Trade(str(data["select_metric"]), float(data["max_psnr_drop"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def qualifies(model: str, summary: Mapping[str, Any], trade: Trade | None = None) -> bool:
    """Beats the reference (a positive gain) and every other generator evaluated alongside:
    by gain, or within ``trade.max_drop`` dB of its gain and better by ``trade.metric``."""
    gains = summary["gain_db"]
    if gains[model] <= 0:
        return False
    return all(
        gains[model] > gain or _traded(model, other, gain, summary, trade)
        for other, gain in gains.items()
        if other != model
    )


def _traded(
    model: str, other: str, gain: float, summary: Mapping[str, Any], trade: Trade | None
) -> bool:
    if trade is None or summary["gain_db"][model] < gain - trade.max_drop:
        return False
    mine, theirs = (summary.get(m, {}).get(trade.metric) for m in (model, other))
    if mine is None or theirs is None:
        return False
    return beats(trade.metric, mine, theirs)


def _record(
    client,
    dataset: str,
    summary: Mapping[str, Any],
    model_files: Mapping[str, Path | str],
    evaluation_run: str | None,
    name: str,
    trade: Trade | None,
) -> str | None:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        log.info("model registry: no versions of %r yet; nothing to tag", name)
        return None
    gains = summary.get("gain_db", {})
    for model, path in model_files.items():
        if model not in gains or not Path(path).is_file():
            continue
        digest = sha256_file(path)
        run_ids = {r.info.run_id for r in _runs_with_digest(client, digest)}
        matched = [v for v in versions if v.run_id in run_ids]
        if not matched:
            continue
        tags = {
            EVAL_PREFIX + "dataset": dataset,
            EVAL_PREFIX + "images": summary.get("images"),
            GAIN_TAG: gains[model],
            QUALIFIED_TAG: str(qualifies(model, summary, trade)).lower(),
            **{EVAL_PREFIX + k: v for k, v in summary.get(model, {}).items()},
        }
        if evaluation_run:
            tags[EVAL_PREFIX + "run_id"] = evaluation_run
        for v in matched:
            for key, value in tags.items():
                client.set_model_version_tag(name, v.version, key, str(value))
            log.info(
                "model registry: %s version %s (%s): gain %+.3f dB over bicubic on %s, %s",
                name,
                v.version,
                model,
                gains[model],
                dataset,
                "qualified" if tags[QUALIFIED_TAG] == "true" else "not qualified",
            )
    return _move_champion(client, name)


def _runs_with_digest(client, digest: str) -> list:
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    return client.search_runs(
        experiments, f"tags.`{DIGEST_TAG}` = '{digest}'", run_view_type=ViewType.ALL
    )


def _move_champion(client, name: str) -> str | None:
    """Point the alias at the best qualified version, reading the tags back from the registry."""
    versions = client.search_model_versions(f"name = '{name}'")
    qualified = [v for v in versions if v.tags.get(QUALIFIED_TAG) == "true"]
    current = client.get_registered_model(name).aliases.get(CHAMPION)
    if not qualified:
        if current is not None:
            client.delete_registered_model_alias(name, CHAMPION)
            log.info("model registry: no version of %s qualifies; alias %r removed", name, CHAMPION)
        return None
    best = max(qualified, key=lambda v: (float(v.tags[GAIN_TAG]), int(v.version)))
    if str(current) != str(best.version):
        client.set_registered_model_alias(name, CHAMPION, best.version)
        log.info(
            "model registry: %s@%s -> version %s (gain %s dB)",
            name,
            CHAMPION,
            best.version,
            best.tags[GAIN_TAG],
        )
    return str(best.version)


def registered_versions(
    tracking_uri: str, model_file: Path | str, name: str = REGISTERED_MODEL
) -> list[str]:
    """Versions of ``name`` whose run carries the digest of ``model_file``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run_ids = {r.info.run_id for r in _runs_with_digest(client, sha256_file(model_file))}
    return sorted(
        (
            str(v.version)
            for v in client.search_model_versions(f"name = '{name}'")
            if v.run_id in run_ids
        ),
        key=int,
    )


def register_file(
    tracking_uri: str, experiment: str, model_file: Path | str, name: str = REGISTERED_MODEL
) -> list[str]:
    """Make sure the generator in ``model_file`` is a version of ``name``: log it in a
    ``register`` run tagged with its digest, unless a version with that digest exists.
    Returns the versions holding it (empty: the registry was unavailable)."""
    from pipelines.inference.restore import load_generator
    from pipelines.running.tracking import Tracker

    fail_fast()
    try:
        versions = registered_versions(tracking_uri, model_file, name)
    except Exception as exc:  # as record_evaluation: a warning, results are on disk
        log.warning(
            "MLflow model registry unavailable at %s (%s); %s not registered.",
            tracking_uri,
            type(exc).__name__,
            model_file,
        )
        return []
    if versions:
        log.info("model registry: %s is already %s version %s", model_file, name, versions[-1])
        return versions
    import torch

    with Tracker("register", tracking_uri, experiment) as tracker:
        tracker.set_tags({DIGEST_TAG: sha256_file(model_file)})
        tracker.log_model(
            load_generator(Path(model_file), torch.device("cpu")),
            Path(model_file).stem,
            registered_model_name=name,
        )
    return registered_versions(tracking_uri, model_file, name)
