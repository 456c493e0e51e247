"""MLflow tracking through ``MlflowClient`` with explicit run ids.

Explicit ids (never the fluent "active run") keep logging correct when trials
run in parallel threads or processes. Metrics go in with ``log_batch``; a
trial's per-epoch metrics are buffered and sent when the trial ends.

With nothing configured the store is an SQLite file and an artifact folder in
the project's state folder; ``MLFLOW_TRACKING_URI`` points it at a server.

Every run is tagged with its owner (host, pid, start time) when it is created, so
that a later run can close what a dead process left RUNNING
(:func:`close_dead_runs`). A registered version is ``pending`` until promotion
tags it ``champion`` or ``challenger``; a version still pending after its run
ended lost its process between registration and promotion, and
:func:`mark_orphan_versions` tags it ``orphaned``.
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
import mlflow.pyfunc
import pandas as pd
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import (
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    Metric,
    Param,
    Run,
    RunTag,
)
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mtl_core.config import state_dir
from mtl_core.owner import Owner
from mtl_core.redact import redact_url
from mtl_core.train import EpochLog

PARENT_TAG = "mlflow.parentRunId"
# A trial ends COMPLETE, PRUNED, FAILED, or INTERRUPTED (its process was stopped: no outcome).
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAILED": "FAILED", "INTERRUPTED": "KILLED"}
OWNER_TAG = "mtl.owner."  # + host, pid, started
CLOSED_TAG = "mtl.closed_reason"
PROMOTION_TAG = "promotion"  # on a version: pending, champion, challenger or orphaned
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
    client = MlflowClient(uri, registry_uri=uri)
    if uri.startswith("sqlite:///"):
        _create_sqlite_store(uri, client)
    return client


_CREATED: set[str] = set()  # SQLite stores this process has created or checked


def _create_sqlite_store(uri: str, client: MlflowClient) -> None:
    """Create or migrate the SQLite store under a file lock, once per process.

    Two processes creating one store at once both run its migrations and leave
    it broken ("table _alembic_tmp_params already exists"); the lock makes the
    second wait and find the tables made.
    """
    if uri in _CREATED:
        return
    with FileLock(uri.removeprefix("sqlite:///") + ".lock"):
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    _CREATED.add(uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Experiment id by name, creating it; local stores keep artifacts in the state folder."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        location = (state_dir() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # another run created it a moment ago
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise exc from None
        return exp.experiment_id


def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run (a child when ``parent_run_id`` is given); returns its id.

    The run is tagged with this process as its owner (``mtl.owner.*``); URL-valued
    tags have their credentials redacted.
    """
    owner = {OWNER_TAG + k: v for k, v in Owner.current().as_dict().items()}
    tags = {**owner, **{k: redact_url(str(v)) for k, v in (tags or {}).items()}}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def run_owner(run: Run) -> Owner | None:
    """The owner a run was tagged with when it was created; None for runs without one."""
    tags = run.data.tags
    return Owner.from_dict(
        {k.removeprefix(OWNER_TAG): v for k, v in tags.items() if k.startswith(OWNER_TAG)}
    )


def close_dead_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """Close the experiment's RUNNING runs whose owner process is dead, as FAILED with a reason.

    Only runs whose owner ran on this host and is gone are touched: runs of a live
    process, of another host, or without an owner tag are left alone. A trial's
    child run is also tagged ``trial.state`` ``INTERRUPTED``. Returns the runs closed.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    running = client.search_runs(
        [exp.experiment_id], "attributes.status = 'RUNNING'", max_results=5000
    )
    me = Owner.current().describe()
    closed = []
    for run in running:
        owner = run_owner(run)
        if owner is None or owner.alive() is not False:
            continue
        close_run(client, run, f"{owner.describe()} ended without closing this run; closed by {me}")
        closed.append(run)
    return closed


def close_run(client: MlflowClient, run: Run, reason: str) -> None:
    """End a run its process left RUNNING as FAILED, with ``reason`` as ``mtl.closed_reason``.

    A trial's child run is also tagged ``trial.state`` ``INTERRUPTED`` with the reason.
    """
    tags = {CLOSED_TAG: reason}
    if "trial.number" in run.data.tags:
        tags.update({"trial.state": "INTERRUPTED", "trial.reason": reason})
    set_tags(client, run.info.run_id, tags)
    end_run(client, run.info.run_id, "FAILED")


def close_tagged_runs(
    client: MlflowClient, experiment_id: str, tags: dict[str, str], reason: str
) -> list[Run]:
    """Close the experiment's RUNNING runs that carry all of ``tags`` (see :func:`close_run`).

    For runs of a process known to be gone, wherever it ran: the trial runs of a trial
    worker whose flow run crashed. Returns the runs closed.
    """
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    running = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and {where}", max_results=5000
    )
    for run in running:
        close_run(client, run, reason)
    return running


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
        tags: More tags of the run (a trial worker's flow run id).
    """

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        trial_number: int,
        params: dict[str, Any],
        base_params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.run_id = start_run(
            client,
            experiment_id,
            f"trial-{trial_number:03d}",
            tags={**(tags or {}), "trial.number": str(trial_number)},
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
    client: MlflowClient,
    run_id: str,
    model: dict[str, Any],
    registered_name: str,
    tags: dict[str, str],
    *,
    card: str | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    name: str = "model",
) -> str:
    """Log a pyfunc model as an MLflow 3 logged model of the run and register a version of it.

    The logged model is created with the run as its source and logged with
    ``mlflow.pyfunc.log_model(name=..., model_id=...)`` (explicit ids, no active run), then
    recorded as an output of the run, so it shows in the run's Models column; the new
    registry version is made from it (``mlflow.register_model("models:/<model_id>")``), which
    links the version, the logged model and the run.

    Args:
        client: MLflow client.
        run_id: Run that produced the model.
        model: Keyword arguments of ``mlflow.pyfunc.log_model``
            (see :func:`~mtl_core.integrations.serving.pyfunc_model`).
        registered_name: Registered model name.
        tags: Tags of the logged model and of the new version (e.g. its test objective).
        card: Model card (markdown): written as ``model_card.md`` next to ``MLmodel`` and
            used as the version's description.
        metrics: Metrics to attach to the logged model (they are the run's too).
        params: Params of the logged model.
        name: Name of the logged model.

    Returns:
        The new version number, as a string.
    """
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id,
        name=name,
        source_run_id=run_id,
        tags=tags,
        params={k: str(v)[:6000] for k, v in (params or {}).items()},
    )
    mlflow.pyfunc.log_model(name=name, model_id=logged.model_id, **model)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    if metrics:
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, 0, model_id=logged.model_id)
            for k, v in metrics.items()
            if v == v
        ]
        for i in range(0, len(items), _BATCH):
            client.log_batch(run_id, metrics=items[i : i + _BATCH])
    if card:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model_card.md"
            path.write_text(card)
            client.log_model_artifact(logged.model_id, str(path))
    # register_model also tags the logged model with its version, which links the two in the UI.
    version_tags = {**tags, PROMOTION_TAG: "pending"}  # until :func:`promote` records its decision
    version = mlflow.register_model(
        f"models:/{logged.model_id}", registered_name, tags=version_tags
    )
    if card:
        client.update_model_version(registered_name, version.version, description=card)
    return str(version.version)


def mark_orphan_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Tag versions whose run ended between registration and promotion ``orphaned``.

    A version is pending from registration until promotion tags it. A pending
    version that holds an alias was promoted and only lost its tag: the tag is
    set from the alias. One without an alias whose run is no longer RUNNING, or
    whose owner is dead, is an orphan: it gets ``promotion`` = ``orphaned`` and
    a ``promotion.reason``, and never an alias. Returns the orphans.
    """
    try:
        aliases = client.get_registered_model(name).aliases  # alias -> version
    except MlflowException:  # no such model yet
        return []
    held = {str(v): a for a, v in aliases.items()}
    orphans = []
    for version in client.search_model_versions(f"name = '{name}'", max_results=10000):
        if version.tags.get(PROMOTION_TAG) != "pending":
            continue
        number = str(version.version)
        if number in held:
            client.set_model_version_tag(name, number, PROMOTION_TAG, held[number])
            continue
        try:
            run = client.get_run(version.run_id)
        except MlflowException:
            run = None
        owner = run_owner(run) if run else None
        if (
            run is not None
            and run.info.status == "RUNNING"
            and (owner is None or owner.alive() is not False)
        ):
            continue  # its run may still be promoting it
        who = f" ({owner.describe()})" if owner else ""
        reason = f"run {version.run_id}{who} ended after registering it, before promoting it"
        client.set_model_version_tag(name, number, PROMOTION_TAG, "orphaned")
        client.set_model_version_tag(name, number, "promotion.reason", reason)
        orphans.append(version)
    return orphans


@dataclass
class Promotion:
    """The outcome of comparing a new version with the current champion."""

    version: str
    alias: str
    new_score: float
    champion_version: str | None
    champion_score: float | None
    earlier_versions: int = 0  # versions registered before this one, when none held the alias

    @property
    def promoted(self) -> bool:
        """Whether the new version became the champion."""
        return self.alias == "champion"

    def describe(self) -> str:
        """One sentence for logs and summaries."""
        if self.champion_version is None and not self.earlier_versions:
            return (
                f"version {self.version} is the first champion "
                f"(test objective {self.new_score:.4f})"
            )
        if self.champion_version is None:
            return (
                f"version {self.version} becomes champion (test objective {self.new_score:.4f}): "
                f"none of the {self.earlier_versions} earlier version(s) held the alias"
            )
        verb = "beats" if self.promoted else "does not beat"
        return (
            f"version {self.version} (test objective {self.new_score:.4f}) {verb} champion "
            f"version {self.champion_version} ({self.champion_score:.4f}); alias '{self.alias}'"
        )


SCORE_TAG = "test_objective"


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version that holds ``champion``; None when none does."""
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def promote(client: MlflowClient, name: str, version: str, score: float) -> Promotion:
    """Give ``version`` the alias ``champion`` only if its test objective beats the champion's.

    The objective is lower-is-better; ties keep the current champion. Otherwise
    the new version gets ``challenger``. The decision is also tagged on the
    version (``promotion``). Reading the champion and moving the alias must not
    interleave with another run's promotion: callers hold a lock per model.
    """
    current = champion(client, name)
    champ_score = float(current.tags[SCORE_TAG]) if current and SCORE_TAG in current.tags else None
    better = current is None or champ_score is None or score < champ_score
    alias = "champion" if better else "challenger"
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, PROMOTION_TAG, alias)
    earlier = 0
    if current is None:
        versions = client.search_model_versions(f"name = '{name}'", max_results=10000)
        earlier = sum(int(v.version) < int(version) for v in versions)
    return Promotion(
        version, alias, score, str(current.version) if current else None, champ_score, earlier
    )
