"""Embedded defaults: with nothing configured, all state stays in one ignored folder.

``MTL_STATE_DIR`` (default ``./.state``) holds Prefect's home (its ephemeral
API's SQLite database and cached results), the MLflow SQLite store and
artifacts, and the Optuna study file. ``PREFECT_API_URL``,
``MLFLOW_TRACKING_URI`` and ``MTL_OPTUNA_STORAGE`` point each at a real server
instead. Variables already set are never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_environment() -> Path:
    """Set the embedded defaults in ``os.environ``; returns the state folder."""
    state = Path(os.environ.get("MTL_STATE_DIR") or ".state").resolve()
    os.environ["MTL_STATE_DIR"] = str(state)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    # Prefect creates its home but not the folders above it.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # No network for telemetry here, and a 2-core machine needs time to start the local API.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # Each MLflow call retries for about 30 s (2+4+8+16 s): a restarting server is ridden out,
    # a dead one stops the search at the next trial (see flows.pipeline.search_worker).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow 3's usage telemetry (read when mlflow is imported, so set here, first) has no
    # network to reach here either, and its client sets and unsets _MLFLOW_TELEMETRY_SESSION_ID
    # in os.environ from a background thread. Once, in the pool tests, a trial worker's
    # log-batch request failed with KeyError '_MLFLOW_TELEMETRY_SESSION_ID' (a race on the
    # environment, as far as we can tell), which stopped the search. A user's setting wins.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return state
