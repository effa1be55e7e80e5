"""The restoration flow: ``decrappify restore`` as a Prefect flow, one task per image.

The flow runs the command's own code (``pipelines.inference.restore_files.restore_paths``) and only
swaps the step that restores one image for a task, so each image shows in the Prefect UI with
its duration and the model is loaded once per flow run. A bad image is a warning in the log
and an entry in the returned summary, not a failed task: like the command, the flow restores
the rest. The flow fails when nothing can be restored (output folder, model, settings).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines.inference.restore import Network
from pipelines.inference.restore_files import Job, Outcome, Settings, restore_file, restore_paths


# Outputs are files the task writes itself; Prefect caching would skip them on a rerun.
@task(name="restore-image", cache_policy=NO_CACHE, task_run_name="restore {job.source.name}")
def restore_image(job: Job, model: Network, settings: Settings) -> Outcome:
    return restore_file(job, model, settings)


@flow(name="restoration", description="Restore image files with a trained generator.")
def restoration(
    inputs: list[str],
    out: str,
    model: str | None = None,
    compare: bool = False,
    tile: int = 256,
    overlap: int = 32,
    device: str = "auto",
    suffix: str = "_restored",
    task: str | None = None,
    render_size: int = 0,
    self_ensemble: bool = False,
) -> dict:
    """Restore ``inputs`` (files, folders, glob patterns) into ``out``; returns the summary:
    ``restored`` inputs, ``failed`` {input: reason}, ``seconds`` and ``images_per_s``.

    ``model``: a checkpoint file, an exported ``.onnx`` or ``.safetensors`` file, an MLflow
    model URI (``models:/decrappify-generator@champion``) or None for the repository's
    ``models/gan_generator.pt``; a colorizer's registered name is ``decrappify-colorizer``.
    ``task`` (restore | colorize), when given, refuses a model of the other task;
    ``render_size`` is a colorizer's and ``self_ensemble`` averages over flips and turns (see
    ``restore_paths``).
    """
    logger = get_run_logger()
    summary = restore_paths(
        inputs,
        out,
        model,
        compare=compare,
        tile=tile,
        overlap=overlap,
        device=device,
        suffix=suffix,
        task=task,
        render_size=render_size,
        self_ensemble=self_ensemble,
        report=logger.warning,
        progress=logger.info,
        run_one=restore_image,
    )
    logger.info(summary.line())
    return summary.as_dict()
