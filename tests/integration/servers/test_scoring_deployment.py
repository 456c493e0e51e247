"""The ``mtl-score`` deployment made by ``mtl deploy``, run by the worker of the real stack.

The run is started through the REST API, as the dashboard's Run button does, and scores
rows with the champion that the ``pipeline_run`` fixture trained and registered.
"""

import json

import numpy as np
import pandas as pd
import pytest

from flows.params import ScoreParams

from .conftest import TINY, parent_run, wait_for_final
from .test_deployment import _resolve

pytestmark = [pytest.mark.integration, pytest.mark.servers]


@pytest.fixture(scope="module")
def scoring_deployment(stack, deployment) -> dict:
    """The scoring deployment ``mtl deploy`` created next to the training one."""
    resp = stack.prefect("GET", "/deployments/name/mtl-score/servers-test")
    assert resp.status_code == 200, deployment.cli_output
    return resp.json()


def test_deploy_creates_a_scoring_deployment_with_its_own_schedule(
    stack, deployment, scoring_deployment
):
    data = scoring_deployment
    assert f"deployment mtl-score/servers-test ({data['id']})" in deployment.cli_output
    assert data["work_pool_name"] == deployment.data["work_pool_name"] == stack.pool
    assert data["enforce_parameter_schema"] is True
    assert data["pull_steps"] == deployment.data["pull_steps"]  # runs from the repository
    schema = data["parameter_openapi_schema"]
    form = _resolve(schema, schema["properties"]["params"])
    assert set(form["properties"]) == set(ScoreParams.model_fields)
    assert sorted(form["required"]) == ["input", "output"]
    assert form["properties"]["chunk_rows"]["minimum"] == 100
    (schedule,) = data["schedules"]
    assert schedule["slug"] == "daily" and schedule["schedule"]["cron"] == "0 6 * * *"
    assert schedule["active"] is False  # no --score-input given: nothing to score yet
    tracking = TINY["tracking"]["experiment"]
    assert data["parameters"]["params"]["model_uri"] == f"models:/{tracking}@champion"


def test_a_scoring_run_started_through_the_api_scores_with_the_champion(
    stack, scoring_deployment, pipeline_run
):
    rng = np.random.default_rng(0)
    dim = TINY["data"]["synthetic"]["dim"]
    rows = pd.DataFrame(rng.normal(size=(300, dim)), columns=[f"x{j}" for j in range(dim)])
    rows.to_parquet(stack.dir / "batch.parquet", row_group_size=100)
    params = ScoreParams(
        input=str(stack.dir / "batch.parquet"),
        output=str(stack.dir / "scores" / "v{version}.parquet"),
        model_uri=f"models:/{pipeline_run.experiment}@champion",
        chunk_rows=100,
    ).model_dump(mode="json")
    resp = stack.prefect(
        "POST",
        f"/deployments/{scoring_deployment['id']}/create_flow_run",
        json={"name": "servers-score", "parameters": {"params": params}},
    )
    assert resp.status_code == 201, resp.text
    run = wait_for_final(stack, resp.json()["id"])
    assert run["state_type"] == "COMPLETED", run["state"]["message"]

    preds = pd.read_parquet(stack.dir / "scores" / "v1.parquet")
    assert list(preds.columns) == ["reg", "cls", "cls_proba", "model_version"]
    assert len(preds) == 300 and set(preds["model_version"]) == {"1"}

    client = stack.mlflow_client()
    exp = client.get_experiment_by_name(f"{pipeline_run.experiment}-scoring")
    (scoring,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{run['id']}'"
    )
    assert scoring.info.status == "FINISHED"
    training = parent_run(stack, pipeline_run.experiment, pipeline_run.id)
    assert scoring.data.tags["training.run_id"] == training.info.run_id
    assert scoring.data.tags["model.version"] == "1"
    assert scoring.data.tags["model.alias"] == "champion"
    assert scoring.data.metrics["rows/scored"] == 300

    artifacts = stack.prefect(
        "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    ).json()
    by_key = {a["key"]: a for a in artifacts}
    assert by_key["mtl-drift-report"]["type"] == "table"
    features = {r["feature"] for r in json.loads(by_key["mtl-drift-report"]["data"])}
    assert features == set(rows.columns)
    assert by_key["mtl-drift-plot"]["data"].startswith("data:image/png;base64,")
