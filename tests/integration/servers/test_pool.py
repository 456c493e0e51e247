"""A pool-mode search on the real stack: two trial workers, one killed in the middle of a trial.

The run (fixture ``pool_run``) is started through the REST API with only the
fields it changes (``{"params": {...}}``, not the whole object), so it also
checks that those are merged into the deployment's parameters. It searches 6
trials on 2 trial-worker flow runs of ``mtl-trial-worker/servers-test``; as
soon as a trial is training, the process that owns it is SIGKILLed. The other
worker runs a new trial in its place; the pipeline finishes as usual.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import (
    child_runs,
    load_study,
    parent_run,
    trigger,
    wait_for_final,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.servers]

EXPERIMENT = "servers-pool"
# Only what this run changes; trials of ~1-3 s (40 epochs, no early stop), so the kill
# lands inside one.
SENT = {
    "experiment": EXPERIMENT,
    "n_trials": 6,
    "n_workers": 2,
    "executor": "pool",
    "epochs": 40,
    "overrides": ["train.patience=100"],
}


@dataclass
class PoolRun:
    """The pool-mode run, and the trial whose worker was killed."""

    id: str
    final: dict[str, Any]
    killed_trial: int
    killed_pid: int
    killed_flow_run: str


@pytest.fixture(scope="package")
def pool_run(stack, deployment) -> PoolRun:
    resp = trigger(stack, deployment, EXPERIMENT, {"params": SENT})
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]

    def trial_in_training():
        study = load_study(stack, EXPERIMENT)
        running = study.get_trials(deepcopy=False) if study else []
        return next(
            (
                t
                for t in running
                if t.state.name == "RUNNING" and t.intermediate_values and "owner" in t.user_attrs
            ),
            None,
        )

    trial = wait_until(trial_in_training, 300, "a trial of a trial worker in training", 0.2)
    pid = int(trial.user_attrs["owner"]["pid"])
    os.kill(pid, signal.SIGKILL)
    final = wait_for_final(stack, run_id, timeout=420)
    return PoolRun(run_id, final, trial.number, pid, trial.user_attrs["prefect.flow_run_id"])


def test_the_run_completes_and_registers_a_champion(stack, pool_run):
    assert pool_run.final["state_type"] == "COMPLETED", pool_run.final["state"]["message"]
    parent = parent_run(stack, EXPERIMENT, pool_run.id)
    assert parent.info.status == "FINISHED"
    champion = stack.mlflow_client().get_model_version_by_alias(EXPERIMENT, "champion")
    assert champion.run_id == parent.info.run_id


def test_a_partial_params_object_is_merged_into_the_deployments(
    stack, deployment, tiny_config, pool_run
):
    # The run stores what the caller sent; the flow ran the deployment's config with it.
    assert pool_run.final["parameters"] == {"params": SENT}
    assert deployment.data["parameters"]["params"]["config"] == tiny_config.stem
    parent = parent_run(stack, EXPERIMENT, pool_run.id)
    assert parent.data.tags["config.file"] == str(tiny_config)  # not configs/default.yaml
    assert parent.data.params["search.n_trials"] == "6"
    assert parent.data.params["search.executor"] == "pool"
    assert parent.data.params["train.patience"] == "100"


def test_the_study_holds_exactly_n_trials_after_a_worker_died(stack, pool_run):
    from mtl_core.integrations import search

    study = load_study(stack, EXPERIMENT)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert search.finished_trials(study) == 6
    assert len(trials) == 7 and all(t.state.is_finished() for t in trials.values())
    dead = trials[pool_run.killed_trial]
    assert dead.state.name == "FAIL" and not search.ran_to_an_outcome(dead)
    assert str(pool_run.killed_pid) in dead.user_attrs["fail_reason"] or (
        "CRASHED" in dead.user_attrs["fail_reason"]
    ), dead.user_attrs["fail_reason"]
    others = [t for n, t in trials.items() if n != pool_run.killed_trial]
    assert {t.state.name for t in others} == {"COMPLETE"}
    # Both workers searched; the survivor ran the trial the dead one left.
    workers = {t.user_attrs["prefect.flow_run_id"] for t in trials.values()}
    assert len(workers) == 2 and pool_run.killed_flow_run in workers


def test_the_dead_trials_mlflow_run_ends_failed_with_a_reason(stack, pool_run):
    parent = parent_run(stack, EXPERIMENT, pool_run.id)
    children = {int(c.data.tags["trial.number"]): c for c in child_runs(stack, parent)}
    assert sorted(children) == list(range(7))  # one child run per trial, the dead one too
    dead = children[pool_run.killed_trial]
    assert dead.info.status == "FAILED"
    reason = dead.data.tags["mtl.closed_reason"]
    assert "ended CRASHED" in reason and dead.data.tags["trial.state"] == "INTERRUPTED", reason
    assert dead.data.tags["prefect.flow_run_id"] == pool_run.killed_flow_run
    runs = stack.mlflow_client().search_runs([parent.info.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert {c.info.status for n, c in children.items() if n != pool_run.killed_trial} == {
        "FINISHED"
    }


def test_the_worker_runs_show_under_the_pipeline_run(stack, pool_run):
    workers = stack.prefect(
        "POST",
        "/flow_runs/filter",
        json={"flows": {"name": {"any_": ["mtl-trial-worker"]}}},
    ).json()
    mine = []
    for run in workers:
        task = stack.prefect("GET", f"/task_runs/{run['parent_task_run_id']}").json()
        if task["flow_run_id"] == pool_run.id:  # a subflow of the pipeline's run
            mine.append(run)
    assert len(mine) == 2
    states = {r["id"]: r["state_type"] for r in mine}
    assert states.pop(pool_run.killed_flow_run) == "CRASHED"
    assert list(states.values()) == ["COMPLETED"]
    assert {r["work_pool_name"] for r in mine} == {stack.pool}
