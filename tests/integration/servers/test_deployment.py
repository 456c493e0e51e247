"""``mtl deploy`` on the real Prefect server: the typed form, the schedules, rejected input."""

import pytest

from flows.params import NO_PASSWORD_PATTERN, PipelineParams
from mtl_core.config import config_names

from .conftest import REPO, run_params, trigger, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.servers]


def _resolve(schema: dict, prop: dict) -> dict:
    ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", []) if "$ref" in a), None)
    return schema["definitions"][ref.rsplit("/", 1)[-1]] if ref else prop


def _types(prop: dict) -> set[str]:
    return {prop["type"]} if "type" in prop else {a.get("type") for a in prop.get("anyOf", [])}


def _bounds(prop: dict) -> dict:
    keys = (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "maxItems",
        "pattern",
    )
    found = {k: v for k, v in prop.items() if k in keys}
    for alt in prop.get("anyOf", []):
        found.update({k: v for k, v in alt.items() if k in keys})
    return found


def test_cli_reports_the_deployment_and_its_schedules(deployment):
    out = deployment.cli_output
    assert f"deployment {deployment.name} ({deployment.id})" in out
    nightly = {"n_trials": 3, "new_study": True}
    assert f"nightly  {deployment.crons['nightly']} (UTC) {nightly}" in out
    assert f"weekly   {deployment.crons['weekly']} (UTC)" in out
    assert f"prefect deployment run '{deployment.name}'" in out
    assert "deployment mtl-trial-worker/servers-test on work pool 'mtl-process'" in out


def test_parameters_render_as_a_typed_form(deployment, tiny_config):
    data = deployment.data
    assert data["enforce_parameter_schema"] is True
    assert data["work_pool_name"] == "mtl-process"
    assert data["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]  # the worker runs flows from the repository root
    schema = data["parameter_openapi_schema"]
    assert list(schema["properties"]) == ["params"]
    assert schema["additionalProperties"] is False  # an unknown top-level key is refused
    outer = schema["properties"]["params"]
    assert outer["description"]  # from the flow's docstring
    form = _resolve(schema, outer)
    assert form.get("additionalProperties") is False  # a typo is refused, not ignored
    fields = PipelineParams.model_fields
    assert set(form["properties"]) == set(fields)  # (PostgreSQL's JSONB reorders keys)
    for position, (name, info) in enumerate(fields.items()):
        prop = form["properties"][name]
        assert prop["position"] == position, name  # the form keeps the model's order
        assert prop["description"] == info.description, name
        assert "default" in prop, name
        assert _types(prop) - {"null"} <= {"string", "integer", "number", "boolean", "array"}
        assert _types(prop) - {"null"}, f"{name} has no type"
    props = form["properties"]
    assert _bounds(props["n_trials"]) == {"minimum": 1, "maximum": 1000}
    assert _bounds(props["n_workers"]) == {"minimum": 1, "maximum": 32}
    assert _bounds(props["timeout_minutes"]) == {"exclusiveMinimum": 0, "maximum": 1440}
    assert _bounds(props["epochs"]) == {"minimum": 1, "maximum": 10000}
    assert "pattern" in _bounds(props["device"])
    assert props["overrides"]["items"] == {"type": "string", "pattern": NO_PASSWORD_PATTERN}
    # The config is a dropdown of the bundled configs, this session's tiny one among them.
    assert props["config"]["enum"] == config_names() and tiny_config.stem in config_names()
    # Hand-started runs default to the config's own settings.
    assert data["parameters"] == run_params(tiny_config)


def test_nightly_and_weekly_schedules_are_active_with_their_own_parameters(
    stack, deployment, tiny_config
):
    data = deployment.data
    assert data["paused"] is False
    schedules = {s["slug"]: s for s in data["schedules"]}
    assert set(schedules) == {"nightly", "weekly"}
    for slug, cron in deployment.crons.items():
        assert schedules[slug]["active"] is True
        assert schedules[slug]["schedule"]["cron"] == cron
        assert schedules[slug]["schedule"]["timezone"] == "UTC"
    expected = {
        "nightly": run_params(tiny_config, n_trials=3, new_study=True),
        "weekly": run_params(tiny_config, n_trials=6, n_workers=2, new_study=True),
    }
    for slug in schedules:
        assert schedules[slug]["parameters"] == expected[slug]

    # The server's scheduler has queued upcoming runs of both, each with its parameters.
    def upcoming() -> dict:
        runs = stack.prefect(
            "POST",
            "/flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [deployment.id]}},
                "flow_runs": {
                    "state": {"type": {"any_": ["SCHEDULED"]}},
                    "tags": {"all_": ["auto-scheduled"]},
                },
            },
        ).json()
        by_schedule = {r["created_by"]["display_value"]: r for r in runs if r.get("created_by")}
        return by_schedule if set(by_schedule) == {"nightly", "weekly"} else None

    queued = wait_until(upcoming, 90, "the scheduler to queue runs of both schedules", 2)
    for slug, run in queued.items():
        assert run["parameters"] == expected[slug]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"n_trials": 0}, "params.n_trials", "less than the minimum of 1"),
        ({"n_workers": 99}, "params.n_workers", "greater than the maximum of 32"),
        ({"epochs": "many"}, "params.epochs", "'many' is not valid"),
        ({"device": "tpu"}, "params.device", "'tpu' does not match"),
        ({"config": "../../../etc/passwd"}, "params.config", "is not one of"),
        (
            {"overrides": ["search.storage=postgresql+psycopg2://u:pw@db/optuna"]},
            "params.overrides[0]",
            "does not match",
        ),
        ({"n_trails": 5}, "params", "n_trails"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_field(
    stack, deployment, tiny_config, change, field, reason
):
    params = run_params(tiny_config)
    params["params"].update(change)
    name = f"servers-invalid-{next(iter(change))}"
    resp = trigger(stack, deployment, name, params)
    assert resp.status_code in (409, 422), resp.text
    detail = resp.json()["detail"]
    assert f"field '{field}'" in detail and reason in detail, detail
    runs = stack.prefect(
        "POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}}
    ).json()
    assert runs == []  # refused before a run existed


def test_an_unknown_top_level_key_is_refused_before_a_run_exists(stack, deployment):
    name = "servers-invalid-parms"
    resp = trigger(stack, deployment, name, {"parms": {"n_trials": 5}})
    assert resp.status_code == 409, resp.text
    detail = resp.json()["detail"]
    assert "'parms' was unexpected" in detail, detail
    runs = stack.prefect(
        "POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}}
    ).json()
    assert runs == []


def test_deploy_creates_the_trial_worker_deployment_next_to_the_pipelines(stack, deployment):
    resp = stack.prefect("GET", "/deployments/name/mtl-trial-worker/servers-test")
    assert resp.status_code == 200, deployment.cli_output
    worker = resp.json()
    assert worker["work_pool_name"] == deployment.data["work_pool_name"] == stack.pool
    assert worker["pull_steps"] == deployment.data["pull_steps"]  # runs from the repository
    assert worker["enforce_parameter_schema"] is True
    assert worker["schedules"] == [] and worker["concurrency_limit"] is None
    schema = worker["parameter_openapi_schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["params"]
