"""A run started from the REST API, as the dashboard's Run button does, executed by the worker.

The run (fixture ``pipeline_run``) searches 6 trials on 2 worker processes
sharing one PostgreSQL-backed Optuna study. The tests check what a user would
look at afterwards: the Prefect run and its artifacts, the MLflow parent run
with one child per trial, the registered version holding ``champion``.
"""

import json
import re

import httpx
import pytest

from .conftest import child_runs, load_study, parent_run

pytestmark = [pytest.mark.integration, pytest.mark.servers]


def test_run_completes_on_the_worker_with_the_parameters_sent(stack, pipeline_run):
    run = pipeline_run.final
    assert run["state_type"] == "COMPLETED", run["state"]["message"]
    assert run["parameters"] == pipeline_run.parameters
    assert run["work_pool_name"] == stack.pool
    assert run["infrastructure_pid"]  # a process the worker started


def test_mlflow_parent_run_links_back_to_the_prefect_run(stack, pipeline_run):
    parent = parent_run(stack, pipeline_run.experiment, pipeline_run.id)
    assert parent is not None, "no MLflow run tagged with the flow run's id"
    assert parent.info.status == "FINISHED"
    name = r"servers-main \| servers-tiny \| \d{4}-\d\d-\d\d \d\d:\d\d"
    assert re.fullmatch(name, parent.info.run_name)
    tags = parent.data.tags
    assert tags["prefect.flow_run_name"] == "servers-main"
    url = tags["prefect.flow_run_url"]
    assert url.startswith(stack.ui + "/") and url.endswith(pipeline_run.id)
    page = httpx.get(url, headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()  # the Prefect UI
    assert parent.data.params["search.n_trials"] == "6"
    assert parent.data.params["search.n_workers"] == "2"


def test_two_workers_fill_one_study_with_exactly_the_trials_asked(stack, pipeline_run):
    study = load_study(stack, pipeline_run.experiment)
    assert study is not None
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    assert all(t.state.is_finished() for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    # ... run by two search-worker task runs (two processes) of this flow run.
    task_runs = stack.prefect(
        "POST",
        "/task_runs/filter",
        json={
            "flow_runs": {"id": {"any_": [pipeline_run.id]}},
            "task_runs": {"name": {"like_": "search-worker"}},
        },
    ).json()
    assert len(task_runs) == 2
    assert {t["state_type"] for t in task_runs} == {"COMPLETED"}

    # One MLflow child run per trial, all under this flow run's parent.
    parent = parent_run(stack, pipeline_run.experiment, pipeline_run.id)
    children = child_runs(stack, parent)
    assert sorted(c.info.run_name for c in children) == [f"trial-{i:03d}" for i in range(6)]
    assert sorted(int(c.data.tags["trial.number"]) for c in children) == list(range(6))
    in_experiment = stack.mlflow_client().search_runs([parent.info.experiment_id], max_results=1000)
    assert len(in_experiment) == 7  # the parent and its 6 children, nothing stray
    states = {t.number: t.state.name for t in trials}
    for child in children:
        n = int(child.data.tags["trial.number"])
        assert child.data.tags["trial.state"] == states[n].replace("FAIL", "FAILED")


def test_model_version_is_registered_and_holds_champion(stack, pipeline_run):
    client = stack.mlflow_client()
    parent = parent_run(stack, pipeline_run.experiment, pipeline_run.id)
    version = client.get_model_version_by_alias(pipeline_run.experiment, "champion")
    assert version.run_id == parent.info.run_id
    assert version.version == "1"  # first run of this experiment: first champion
    assert parent.data.tags["model.uri"] == f"models:/{pipeline_run.experiment}/1"
    assert parent.data.tags["promotion.decision"] == "champion"


def test_flow_run_has_summary_table_and_link_artifacts(stack, pipeline_run):
    artifacts = stack.prefect(
        "POST",
        "/artifacts/filter",
        json={
            "artifacts": {"flow_run_id": {"any_": [pipeline_run.id]}},
        },
    ).json()
    by_key = {a["key"]: a for a in artifacts}
    assert {k: by_key[k]["type"] for k in ("mtl-summary", "mtl-top-trials", "mlflow-run")} == {
        "mtl-summary": "markdown",
        "mtl-top-trials": "table",
        "mlflow-run": "markdown",
    }  # Prefect stores a link artifact as markdown: [text](url)
    parent = parent_run(stack, pipeline_run.experiment, pipeline_run.id)
    run_url = f"{stack.mlflow}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    assert by_key["mlflow-run"]["data"] == f"[MLflow parent run]({run_url})"
    assert run_url in by_key["mtl-summary"]["data"]
    assert "# servers-main: multi-task pipeline summary" in by_key["mtl-summary"]["data"]
    study = load_study(stack, pipeline_run.experiment)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    rows = json.loads(by_key["mtl-top-trials"]["data"])
    assert sorted(r["trial"] for r in rows) == sorted(t.number for t in complete)
