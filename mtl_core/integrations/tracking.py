"""MLflow tracking through ``MlflowClient`` with explicit run ids.

Explicit ids (never the fluent "active run") keep logging correct when trials
run in parallel threads or processes. Metrics go in with ``log_batch``; a
trial's per-epoch metrics are buffered and sent when the trial ends.

With nothing configured the store is an SQLite file and an artifact folder in
the project's state folder; ``MLFLOW_TRACKING_URI`` points it at a server.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mtl_core.config import state_dir
from mtl_core.redact import redact_url
from mtl_core.train import EpochLog

PARENT_TAG = "mlflow.parentRunId"
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAILED": "FAILED"}
_BATCH = 900  # MLflow accepts at most 1000 metrics and 100 params per log_batch


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else an SQLite store in the state folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = state_dir()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def get_client() -> MlflowClient:
    """A client on :func:`tracking_uri` (also set as MLflow's global URI, for the registry)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Experiment id by name, creating it; local stores keep artifacts in the state folder."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        location = (state_dir() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run (a child when ``parent_run_id`` is given); returns its id."""
    tags = {k: redact_url(str(v)) for k, v in (tags or {}).items()}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches of 100 (MLflow's limit); values are stringified, passwords masked."""
    items = [Param(k, redact_url(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0
) -> None:
    """Log finite metrics at one step with ``log_batch``."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, metrics=items[i : i + _BATCH])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    """Set several tags in one call; passwords in URLs are masked."""
    client.log_batch(run_id, tags=[RunTag(k, redact_url(str(v))[:5000]) for k, v in tags.items()])


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Terminate a run as ``FINISHED``, ``FAILED`` or ``KILLED``."""
    client.set_terminated(run_id, status=status)


class MlflowTrialLogger:
    """One child run per Optuna trial; per-epoch metrics buffered and sent in batches.

    Args:
        client: MLflow client.
        experiment_id: Experiment of the parent run.
        parent_run_id: The pipeline's parent run.
        trial_number: Optuna trial number (names the run ``trial-007``).
        params: The trial's sampled flat params.
        base_params: Params shared by every trial (logged too, so runs compare).
    """

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        trial_number: int,
        params: dict[str, Any],
        base_params: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.run_id = start_run(
            client,
            experiment_id,
            f"trial-{trial_number:03d}",
            tags={"trial.number": str(trial_number)},
            parent_run_id=parent_run_id,
        )
        log_params(client, self.run_id, {**(base_params or {}), **params})
        self._buffer: list[Metric] = []

    def log_epoch(self, log: EpochLog) -> None:
        """Buffer one epoch's metrics; they are sent in :meth:`finish`."""
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, v, now, log.epoch) for k, v in log.metrics().items())

    def finish(self, state: str, metrics: dict[str, float], reason: str | None) -> None:
        """Send buffered and final metrics, tag the trial's state, and close the run."""
        for i in range(0, len(self._buffer), _BATCH):
            self.client.log_batch(self.run_id, metrics=self._buffer[i : i + _BATCH])
        self._buffer.clear()
        log_metrics(self.client, self.run_id, metrics)
        tags = {"trial.state": state}
        if reason:
            tags["trial.reason"] = reason
        set_tags(self.client, self.run_id, tags)
        end_run(self.client, self.run_id, STATUS[state])


def log_dataset(
    client: MlflowClient,
    run_id: str,
    frame: pd.DataFrame,
    name: str,
    source: str,
    digest: str,
    context: str = "training",
) -> None:
    """Record the dataset as a run input (``log_inputs``), identified by its fingerprint."""
    with warnings.catch_warnings():  # a plain path is ambiguous to MLflow's source registry
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
    tag = InputTag(key="mlflow.data.context", value=context)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), [tag])])


def log_model_version(
    client: MlflowClient, run_id: str, model_dir_writer, registered_name: str, tags: dict[str, str]
) -> str:
    """Log a pyfunc model under the run's ``model/`` artifacts and register a version.

    Args:
        client: MLflow client.
        run_id: Run that owns the model artifacts.
        model_dir_writer: ``callable(path)`` writing the pyfunc directory.
        registered_name: Registered model name.
        tags: Tags of the new version (e.g. its test objective).

    Returns:
        The new version number, as a string.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        model_dir_writer(path)
        client.log_artifacts(run_id, str(path), artifact_path="model")
    try:
        client.create_registered_model(registered_name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(registered_name, source, run_id=run_id, tags=tags)
    return str(version.version)


@dataclass
class Promotion:
    """The outcome of comparing a new version with the current champion."""

    version: str
    alias: str
    new_score: float
    champion_version: str | None
    champion_score: float | None

    @property
    def promoted(self) -> bool:
        """Whether the new version became the champion."""
        return self.alias == "champion"

    def describe(self) -> str:
        """One sentence for logs and summaries."""
        if self.champion_version is None:
            return (
                f"version {self.version} is the first champion "
                f"(test objective {self.new_score:.4f})"
            )
        verb = "beats" if self.promoted else "does not beat"
        return (
            f"version {self.version} (test objective {self.new_score:.4f}) {verb} champion "
            f"version {self.champion_version} ({self.champion_score:.4f}); alias '{self.alias}'"
        )


SCORE_TAG = "test_objective"


def promote(client: MlflowClient, name: str, version: str, score: float) -> Promotion:
    """Give ``version`` the alias ``champion`` only if its test objective beats the champion's.

    The objective is lower-is-better; ties keep the current champion. Otherwise
    the new version gets ``challenger``.
    """
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        current = None
    champ_score = float(current.tags[SCORE_TAG]) if current and SCORE_TAG in current.tags else None
    if current is None or champ_score is None or score < champ_score:
        client.set_registered_model_alias(name, "champion", version)
        alias = "champion"
    else:
        client.set_registered_model_alias(name, "challenger", version)
        alias = "challenger"
    return Promotion(version, alias, score, str(current.version) if current else None, champ_score)
