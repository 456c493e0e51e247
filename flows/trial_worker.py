"""The ``mtl-trial-worker`` flow: one worker of a pool-mode search, on any machine.

A pipeline run with ``search.executor: pool`` starts several of these on the work
pool (:mod:`flows.pool`). Each prepares the run's data on its own machine (and
checks it has the same fingerprint), opens the study the run created in the
shared database, and runs trials until the study holds ``n_trials`` trials that
ran to an outcome, each a child run of the pipeline's MLflow run.

When the worker's process dies (SIGKILL, out of memory), Prefect's process worker
marks the flow run CRASHED and then runs :func:`close_after_crash` in a fresh
process: the dead worker's MLflow trial runs end FAILED with the reason and its
trials are failed without an outcome, so the other workers run new ones.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

import flows  # noqa: F401  (applies the embedded defaults before Prefect reads settings)
from flows import debris, pool
from flows.locks import Locks
from flows.params import TrialWorkerParams
from flows.pipeline import ParentRun, prepare_data, search_worker
from mtl_core.config import ExperimentConfig
from mtl_core.errors import MTLError
from mtl_core.integrations import search


def close_after_crash(flow, flow_run, state) -> None:
    """``on_crashed``: close the trial runs and trials this worker's dead process left."""
    found = pool.close_worker_debris(
        flow_run, pool.ended(flow_run.name, state.type.value, state.message)
    )
    print(f"trial worker {flow_run.name}: closed {pool.describe(found) or 'nothing'} it left")


@flow(name=pool.WORKER_FLOW, log_prints=True, on_crashed=[close_after_crash])
def mtl_trial_worker(params: TrialWorkerParams) -> int:
    """Run trials of a pool-mode pipeline run's study until it holds its ``n_trials``.

    Args:
        params: Filled in by the pipeline run that starts the worker: its resolved
            config, its MLflow parent run, its data fingerprint and its claim lock.

    Returns:
        The number of trials this worker ran.
    """
    debris.label_flow_run()
    cfg = ExperimentConfig.model_validate(params.config)
    data = prepare_data(cfg.data, cfg.features)
    if data.fingerprint != params.data_fingerprint:
        raise MTLError(
            f"data fingerprint {data.fingerprint[:12]} on this worker differs from the run's "
            f"{params.data_fingerprint[:12]}: the worker must read the same data "
            f"({cfg.data.path or cfg.data.source})"
        )
    storage_url = search.resolve_storage(cfg.search)
    search.require_study(cfg, storage_url)
    return search_worker(
        cfg,
        data,
        storage_url,
        cfg.search.n_trials,
        ParentRun(params.experiment_id, params.parent_run_id, ""),
        Locks.for_this_run(),
        params.torch_threads,
        claim_key=params.lock_key,
        labels={pool.RUN_LABEL: str(flow_run.id)},
        until_full=True,
        stop_when=pool.parent_gone(params.parent_flow_run_id),
    )
