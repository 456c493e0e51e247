"""The search on a work pool: trial workers as flow runs of a deployment, on any machine.

With ``search.executor: pool`` a pipeline run creates its study in the shared
database, then starts ``n_workers`` flow runs of the trial-worker deployment
(``mtl-trial-worker/<name>``, made by ``mtl deploy``) with Prefect's
``run_deployment(..., timeout=0)``. Each is linked to the pipeline's flow run as a
subflow, so the dashboard shows the workers under it. Any Prefect worker polling
the deployment's pool picks them up; each worker searches the study until it holds
``n_trials`` trials that ran to an outcome (``run_worker(until_full=True)``), under
the study's claim lock, a Prefect global concurrency limit.

A worker that dies is survived without any queue of our own:

- its running trial is closed as failed without an outcome, so it does not count:
  by the other workers as soon as its owner is seen dead (same host) or its
  Optuna heartbeat falls silent (any host); by the ``on_crashed`` hook of the
  worker flow, which Prefect's process worker runs after the process has died;
  and by the pipeline once it sees the worker's flow run ended without
  completing. A worker still searching then runs a new trial in its place.
- its trial runs in MLflow are closed FAILED with the reason by the same hook and
  again by the pipeline (:func:`close_worker_debris`), so none stays RUNNING.
- when no worker is left and the study is not full, the pipeline starts new ones
  (at most :data:`ROUNDS` rounds).

This module is the Prefect side; the search itself is ``mtl_core.integrations.search``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import get_run_context
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment as this_deployment
from prefect.runtime import flow_run as this_flow_run
from prefect.states import Cancelled, Cancelling

from flows import debris
from flows.params import TrialWorkerParams
from mtl_core.config import ExperimentConfig
from mtl_core.errors import ConfigError, SearchError

WORKER_FLOW = "mtl-trial-worker"
# The MLflow tag and Optuna user attr that name the worker flow run a trial ran in.
RUN_LABEL = "prefect.flow_run_id"
POLL_S = 2.0
START_TIMEOUT_S = 600  # no worker picked any of them up: nothing polls the pool
FULL_GRACE_S = 120  # the study is full; a worker still not ended after this is given up
CANCEL_GRACE_S = 30
ROUNDS = 3
NOT_STARTED = (StateType.SCHEDULED, StateType.PENDING)


@dataclass(frozen=True)
class PoolSearch:
    """What a pool-mode search needs to know about its run."""

    cfg: ExperimentConfig
    storage_url: str
    experiment_id: str
    parent_run_id: str
    data_fingerprint: str
    lock_key: str
    config_file: str


def check_pool_mode(cfg: ExperimentConfig) -> None:
    """Refuse ``search.executor: pool`` where it cannot work, in one line.

    Raises:
        ConfigError: No Prefect server is configured (the temporary local API has no
            workers), or the Optuna storage is a file on this machine.
    """
    if cfg.search.executor != "pool":
        return
    from prefect.settings import PREFECT_API_URL

    from mtl_core.integrations import search

    if not PREFECT_API_URL.value():
        raise ConfigError(
            "search.executor 'pool' needs a Prefect server with a worker polling the "
            "trial workers' pool: set PREFECT_API_URL (infra/local/up writes it to env.sh)"
        )
    search.resolve_storage(cfg.search)


def worker_deployment(cfg: ExperimentConfig, config_file: str) -> str:
    """``search.worker_deployment``, else ``mtl-trial-worker/<this run's deployment>``.

    Outside a deployment (``mtl run`` against a server) the name is the config's file
    stem, the name ``mtl deploy --config <file>`` gives both deployments.
    """
    if cfg.search.worker_deployment:
        return cfg.search.worker_deployment
    return f"{WORKER_FLOW}/{this_deployment.name or Path(config_file).stem}"


def worker_count(client, deployment, wanted: int) -> int:
    """``wanted``, capped by the concurrency limit of the deployment's work pool.

    A run that itself runs on that pool holds one of its slots.

    Raises:
        SearchError: The pool has no slot left for a worker.
    """
    pool = client.read_work_pool(deployment.work_pool_name)
    if pool.concurrency_limit is None:
        return wanted
    mine = get_run_context().flow_run.work_pool_name == pool.name
    free = pool.concurrency_limit - int(mine)
    if free < 1:
        raise SearchError(
            f"work pool '{pool.name}' runs {pool.concurrency_limit} flow run(s) at once and "
            f"this run takes {int(mine)}: no slot for a trial worker; raise it with "
            f"'prefect work-pool set-concurrency-limit {pool.name} {wanted + int(mine)}'"
        )
    return min(wanted, free)


def start_workers(
    name: str, search: PoolSearch, count: int, first: int, threads: int | None
) -> list[FlowRun]:
    """``count`` flow runs of the trial-worker deployment ``name``, linked to this flow run.

    They are numbered from ``first`` (their names end ``-worker-<number>``).
    """
    from prefect.deployments import run_deployment

    parent = str(this_flow_run.id)
    runs = []
    for i in range(count):
        params = TrialWorkerParams(
            config=search.cfg.model_dump(mode="json"),
            experiment_id=search.experiment_id,
            parent_run_id=search.parent_run_id,
            parent_flow_run_id=parent,
            data_fingerprint=search.data_fingerprint,
            lock_key=search.lock_key,
            worker=first + i,
            torch_threads=threads,
        )
        runs.append(
            run_deployment(
                name,
                parameters={"params": params.model_dump(mode="json")},
                flow_run_name=f"{this_flow_run.name}-worker-{params.worker}",
                timeout=0,  # start them all; wait_for_workers waits
                as_subflow=True,  # shown under this run in the dashboard
                tags=["mtl", "trial-worker"],
                # A retried API call must not start a second worker.
                idempotency_key=f"{parent}-trial-worker-{params.worker}",
            )
        )
    return runs


def _read(client, ids: list) -> list[FlowRun]:
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))


def cancel_workers(client, runs: list[FlowRun]) -> None:
    """Cancel the runs not yet final: a run not started at once, a running one by its worker."""
    for run in runs:
        if run.state is None or run.state.is_final():
            continue
        state = Cancelled if run.state.type == StateType.SCHEDULED else Cancelling
        with contextlib.suppress(Exception):  # it may have ended meanwhile
            client.set_flow_run_state(
                run.id, state(message="stopped by the pipeline run"), force=True
            )


def _final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def wait_for_workers(
    client,
    runs: list[FlowRun],
    done: Callable[[], int],
    total: int,
    deadline: float,
    say: Callable[[str], None],
) -> list[FlowRun]:
    """Wait until every worker run is final; returns them as they ended.

    ``done()`` counts the study's trials that ran to an outcome. Runs not started when
    the study is full are cancelled, and so are runs still not ended
    :data:`FULL_GRACE_S` after that (a worker whose machine was lost never ends). A
    failed worker stops the others.

    Raises:
        SearchError: No worker started within :data:`START_TIMEOUT_S`, or the
            deadline (``search.pool_wait_minutes``) passed.
    """
    ids = [r.id for r in runs]
    t0, full_since, given_up, shown = time.monotonic(), None, None, -1
    while True:
        runs = _read(client, ids)
        count = done()
        if count != shown:
            active = sum(r.state.type == StateType.RUNNING for r in runs if r.state)
            say(f"search: {count}/{total} trials done, {active} worker(s) running")
            shown = count
        if all(_final(r) for r in runs):
            return runs
        now = time.monotonic()
        if given_up is not None and now - given_up > CANCEL_GRACE_S:
            return runs  # asked to stop and still not final: their machine is gone
        if given_up is None and any(r.state.is_failed() for r in runs if _final(r)):
            cancel_workers(client, runs)  # the others would fail the same way
            given_up = now
        elif now - t0 > START_TIMEOUT_S and all(
            r.state.type in NOT_STARTED for r in runs if r.state
        ):
            cancel_workers(client, runs)
            raise SearchError(
                f"no Prefect worker started the trial workers within {START_TIMEOUT_S} s: "
                f"is a worker polling the pool ({runs[0].work_pool_name})?"
            )
        if count >= total and given_up is None:
            full_since = full_since or now
            cancel_workers(client, [r for r in runs if r.state and r.state.type in NOT_STARTED])
            if now - full_since > FULL_GRACE_S:
                cancel_workers(client, runs)
                given_up = now
        if now > deadline:
            cancel_workers(client, runs)
            raise SearchError(
                "the trial workers did not finish within search.pool_wait_minutes "
                f"({(deadline - t0) / 60:.0f} min); they were cancelled"
            )
        time.sleep(POLL_S)


def ended(name: str, state_type: str, message: str | None) -> str:
    """Why what a worker left open was closed: ``trial worker flow run 'x' ended CRASHED: ...``."""
    return f"trial worker flow run '{name}' ended {state_type}" + (
        f": {message.strip()}" if message and message.strip() else ""
    )


def close_worker_debris(run: FlowRun, reason: str) -> dict[str, int]:
    """Close what the worker flow run ``run`` left RUNNING: its trial runs and its trials.

    Its MLflow trial runs end FAILED with ``reason`` (``mtl.closed_reason``, and
    ``trial.state`` INTERRUPTED); its Optuna trials fail with ``reason`` and do not
    count toward ``n_trials``. Safe to call again, and from any machine that reaches
    the tracking server and the study's database. Returns how much was closed.
    """
    from mtl_core.integrations import search, tracking

    params = TrialWorkerParams(**run.parameters["params"])
    cfg = ExperimentConfig.model_validate(params.config)
    label = {RUN_LABEL: str(run.id)}
    runs = tracking.close_tagged_runs(
        tracking.get_client(),
        params.experiment_id,
        {tracking.PARENT_TAG: params.parent_run_id, **label},
        reason,
    )
    study = search.open_study(cfg, search.resolve_storage(cfg.search))
    trials = search.close_labelled_trials(study, RUN_LABEL, str(run.id), reason)
    return {"trial run": len(runs), "trial": len(trials)}


def describe(found: dict[str, Any]) -> str:
    """``1 trial run, 1 trial`` (nothing when nothing was found)."""
    return ", ".join(f"{n} {what}{'s' * (n != 1)}" for what, n in found.items() if n)


def parent_gone(parent_flow_run_id: str | None, every_s: float = 10.0) -> Callable[[], bool]:
    """A check, for a worker's ``should_stop``: has the pipeline run that started it ended?

    Asks the API at most every ``every_s`` seconds; an API that does not answer is no
    reason to stop.
    """
    last = {"at": 0.0, "gone": False}

    def check() -> bool:
        if parent_flow_run_id is None or last["gone"]:
            return last["gone"]
        if time.monotonic() - last["at"] < every_s:
            return False
        last["at"] = time.monotonic()
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            run = client.read_flow_run(parent_flow_run_id)
            last["gone"] = run.state is not None and run.state.is_final()
        return last["gone"]

    return check


def run_on_pool(search: PoolSearch, say: Callable[[str], None]) -> None:
    """Fill the study with trial workers on the pool; returns when it is full or they end.

    Raises:
        SearchError: The trial-worker deployment does not exist, a worker failed, no
            worker started, the wait timed out, or workers kept dying.
    """
    from mtl_core.integrations import search as optuna_search

    client = get_run_context().client
    cfg = search.cfg
    name = worker_deployment(cfg, search.config_file)
    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise SearchError(
            f"trial-worker deployment '{name}' not found: 'mtl deploy' creates it next to "
            "the pipeline's (or set search.worker_deployment)"
        ) from None
    wanted = worker_count(client, deployment, cfg.search.n_workers)
    study = optuna_search.open_study(cfg, search.storage_url)
    total = cfg.search.n_trials
    deadline = time.monotonic() + cfg.search.pool_wait_minutes * 60
    started = 0
    for round_ in range(ROUNDS):
        remaining = total - optuna_search.finished_trials(study)
        if remaining <= 0:
            return
        count = min(wanted, remaining)
        if round_:
            say(f"starting {count} new trial worker(s): {remaining} trial(s) still to run")
        runs = start_workers(name, search, count, started, cfg.search.worker_threads)
        started += count
        say(
            f"started {count} trial worker(s) of deployment '{name}' on work pool "
            f"'{deployment.work_pool_name}': " + ", ".join(r.name for r in runs)
        )
        try:
            runs = wait_for_workers(
                client, runs, lambda: optuna_search.finished_trials(study), total, deadline, say
            )
        except BaseException:
            cancel_workers(client, _read(client, [r.id for r in runs]))
            raise
        failed = None
        for run in runs:
            if run.state is not None and run.state.is_completed():
                continue
            kind = run.state.type.value if run.state else "UNKNOWN"
            message = run.state.message if run.state else None
            reason = ended(run.name, kind, message)
            found = close_worker_debris(run, reason)
            if run.state is not None and run.state.is_final():
                debris.crash_task_runs(client, run.id, reason)  # its search-worker task
            say(
                f"trial worker {run.name} ended {kind}"
                + (f" ({message.strip()})" if message else "")
                + (f"; closed {describe(found)} it left" if any(found.values()) else "")
            )
            if run.state is not None and run.state.is_failed():
                failed = failed or f"trial worker {run.name} failed: {message}"
        if failed:
            raise SearchError(failed)
        if all(r.state is not None and r.state.is_completed() for r in runs):
            return  # the study is full, or the search's timeout stopped them
    if optuna_search.finished_trials(study) < total:
        raise SearchError(
            f"trial workers kept ending before the study was full ({ROUNDS} rounds): "
            f"{optuna_search.finished_trials(study)} of {total} trials"
        )
