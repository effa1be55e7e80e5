"""Fixtures shared by the whole suite."""

from pathlib import Path

import pytest

import pipelines  # noqa: F401  (first: its MKL setting must precede any computation here)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One temporary Prefect API for the whole session, shared by every flow test module:
    entering it costs seconds, and two at once would patch the same settings."""
    # Imported here: a run of tests that need no Prefect does not pay for importing it.
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(
        updates={PREFECT_HOME: str(home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}
    ):
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture
def web(tmp_path):
    """A folder served over HTTP on loopback: (folder, base URL)."""
    from local_servers import static_files

    root = tmp_path / "www"
    root.mkdir()
    with static_files(root) as url:
        yield root, url


@pytest.fixture(autouse=True)
def mlflow_store_of_its_own():
    """A test that runs a stage in-process sets MLflow's process-wide store (and, as MLflow
    does, MLFLOW_TRACKING_URI): put both back, so the next test finds the store it configures."""
    import os
    import sys

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
