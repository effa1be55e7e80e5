"""What the two tasks of the pipeline measure and where their models go.

``restore`` undoes downscaling, JPEG and watermarks: every gain is Y-PSNR over bicubic upscaling,
the super-resolution benchmarks' protocol. ``colorize`` turns a gray photo into a colour one
from its luminance alone: the luma is the input's, so Y-PSNR cannot tell a colorizer from the gray
input, and every gain is RGB PSNR over the gray input (its luminance, bicubic-upscaled when
``base.scale`` is above 1). Each task registers its models under a name of its own, so a
colorizer never replaces the restorer as champion.
"""

from __future__ import annotations

from typing import Literal

from pipelines.core.errors import StageError

Task = Literal["restore", "colorize"]
TASKS: tuple[Task, ...] = ("restore", "colorize")

# the metric every gain_db is measured in
FIDELITY: dict[str, str] = {"restore": "psnr_y", "colorize": "psnr"}
# the baseline method every gain_db is measured against
REFERENCE: dict[str, str] = {"restore": "bicubic", "colorize": "gray"}
# the MLflow registered model of each task's generators
REGISTERED_MODEL: dict[str, str] = {
    "restore": "decrappify-generator",
    "colorize": "decrappify-colorizer",
}
# colour at 1/8 of the output size carries too little of the photo to colorize it
COLORIZE_SCALES = (1, 2, 4)


def check_task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"task: {task!r} is not one of {', '.join(TASKS)}")
    return task  # type: ignore[return-value]


def model_task(arch: dict) -> str:
    """The task a generator's ``arch`` was built for (files from before the key: restore)."""
    return str(arch.get("task", "restore"))


class TaskMismatch(StageError):
    """A model of one task given to a run or command of the other."""


def require_task(arch: dict, path: object, wanted: str) -> None:
    """Refuse a model of the other task, naming both."""
    have = model_task(arch)
    if have != wanted:
        raise TaskMismatch(f"{path}: a {have} model, but the task here is {wanted}")
