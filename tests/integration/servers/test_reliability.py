"""The MLflow server going away: a short outage is ridden out, a long one fails the run clearly.

Both tests stop only the MLflow server (``infra/local/down mlflow``) while a
deployment run is in its search, and always start it again.
"""

import copy
import time

import pytest

from .conftest import (
    child_runs,
    load_study,
    parent_run,
    run_params,
    trigger,
    wait_for_final,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.servers]

# Trials of ~1-3 s each (40 epochs, no early stop), so the outage lands inside the search.
SLOW_TRIALS = {"epochs": 40, "overrides": ["train.patience=100"]}


def _state(stack, run_id: str) -> str:
    return stack.prefect("GET", f"/flow_runs/{run_id}").json()["state_type"]


def test_scheduled_run_rides_out_a_short_mlflow_outage(stack, deployment):
    experiment = "servers-blip"
    nightly = next(s for s in deployment.data["schedules"] if s["slug"] == "nightly")
    params = copy.deepcopy(nightly["parameters"])  # what the scheduler starts runs with
    params["params"].update(experiment=experiment, n_trials=6, **SLOW_TRIALS)
    resp = trigger(stack, deployment, experiment, params)
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]
    wait_until(lambda: parent_run(stack, experiment, run_id), 180, "the MLflow parent run")

    worker_log = stack.dir / "logs" / "worker.log"  # flow runs' output lands here
    seen = worker_log.stat().st_size
    stack.infra("down", "mlflow")
    try:
        during = _state(stack, run_id)
        time.sleep(3)
    finally:
        stack.infra("up", "mlflow")
    assert during == "RUNNING"  # the outage really was mid-run

    final = wait_for_final(stack, run_id)
    assert final["state_type"] == "COMPLETED", final["state"]["message"]
    with open(worker_log, errors="replace") as f:
        f.seek(seen)
        assert "Connection refused" in f.read()  # the run did call MLflow while it was down
    parent = parent_run(stack, experiment, run_id)
    assert parent.info.status == "FINISHED"
    assert len(child_runs(stack, parent)) == 6  # every trial's child run made it
    # A scheduled run searches in a study of its own (new_study), not the experiment's.
    study_name = parent.data.params["search.study_name"]
    assert study_name.startswith(f"{experiment}-") and load_study(stack, experiment) is None
    study = load_study(stack, study_name)
    assert len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]) == 6
    champion = stack.mlflow_client().get_model_version_by_alias(experiment, "champion")
    assert champion.run_id == parent.info.run_id


def test_run_fails_clearly_when_mlflow_stays_down_and_study_keeps_its_trials(
    stack, deployment, tiny_config
):
    experiment = "servers-down"
    params = run_params(tiny_config, experiment=experiment, n_trials=8, **SLOW_TRIALS)
    # How long each MLflow call keeps retrying is the client's setting (about 30 s by
    # default); without client retries this test waits less for the same outcome.
    resp = trigger(
        stack,
        deployment,
        experiment,
        params,
        job_variables={"env": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}},
    )
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]

    def two_complete():
        study = load_study(stack, experiment)
        done = (
            [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
            if study
            else []
        )
        return {t.number: t.value for t in done} if len(done) >= 2 else None

    before = wait_until(two_complete, 180, "two completed trials", interval=0.2)
    stack.infra("down", "mlflow")
    try:
        final = wait_for_final(stack, run_id, timeout=180)
    finally:
        stack.infra("up", "mlflow")

    assert final["state_type"] == "FAILED"
    message = final["state"]["message"]
    assert "MlflowException" in message and stack.mlflow.removeprefix("http://") in message, message
    study = load_study(stack, experiment)
    trials = study.get_trials(deepcopy=False)
    assert "search stopped: the tracking server did not answer" in message
    # The search stopped at the first trial it could not record, and left none RUNNING.
    assert len(trials) < 8 and all(t.state.is_finished() for t in trials)
    after = {t.number: t for t in trials}
    for number, value in before.items():  # what finished before the outage is kept as it was
        assert after[number].state.name == "COMPLETE" and after[number].value == value
    # The trial that met the outage kept its own outcome and says why it has no record.
    hit = [t for t in trials if t.state.name == "FAIL" or "log_error" in t.user_attrs]
    assert hit
    for t in hit:
        assert "MlflowException" in t.user_attrs.get("log_error", t.user_attrs.get("fail_reason"))
