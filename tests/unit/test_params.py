"""The flow's parameters: bundled configs only from the dashboard, no booleans, no passwords."""

from __future__ import annotations

import typing

import jsonschema
import pytest
from pydantic import ValidationError

from flows.params import PipelineParams, ScoreParams, params_error
from mtl_core.config import CONFIG_DIR, config_names
from mtl_core.errors import ConfigError


def _number_fields() -> list[str]:
    found = []
    for name, info in PipelineParams.model_fields.items():
        args = [info.annotation]
        while args:
            tp = args.pop()
            if typing.get_origin(tp) is not None:
                args.extend(typing.get_args(tp))
            elif tp in (int, float):
                found.append(name)
    return sorted(set(found))


def test_number_fields_are_found():
    assert _number_fields() == ["epochs", "n_trials", "n_workers", "seed", "timeout_minutes"]


@pytest.mark.parametrize("field", _number_fields())
def test_a_boolean_is_not_a_number(field):
    with pytest.raises(ValidationError, match="got a boolean"):
        PipelineParams.model_validate({field: True})
    assert getattr(PipelineParams.model_validate({field: 5}), field) == 5


# --------------------------------------------------------------------------- the config field


@pytest.mark.parametrize(
    "value",
    [
        "../../../etc/passwd",
        "/etc/passwd",
        "configs/default.yaml",
        str(CONFIG_DIR / "default.yaml"),
        "no-such-config",
        "",
    ],
)
def test_the_dashboard_route_takes_bundled_names_only(value):
    with pytest.raises(ValidationError, match="config"):
        PipelineParams.model_validate({"config": value})  # JSON from a server


def test_bundled_names_validate():
    for name in config_names():
        assert PipelineParams.model_validate({"config": name}).config == name
    assert PipelineParams(config="default.yaml").config == "default"


def test_the_command_line_route_also_takes_an_existing_file(tmp_path):
    path = tmp_path / "own.yaml"
    path.write_text("data: {}\n")
    assert PipelineParams.local(path).config == str(path)
    assert PipelineParams.local("penguins").config == "penguins"
    with pytest.raises(ValidationError, match="not a bundled config"):
        PipelineParams.local(tmp_path / "absent.yaml")


def test_the_form_offers_the_bundled_configs_as_a_dropdown():
    schema = PipelineParams.model_json_schema()
    prop = schema["properties"]["config"]
    assert prop["enum"] == config_names()  # Prefect renders an enum as a select
    assert prop["default"] == "default" and prop["type"] == "string"
    # What the server enforces (enforce_parameter_schema) is this schema.
    jsonschema.validate({"config": "penguins"}, schema)
    for value in ("../../../etc/passwd", "/etc/passwd"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"config": value}, schema)


# --------------------------------------------------------------------------- credentials


SECRET = "search.storage=postgresql://mtl:hunter2@db:5432/optuna"


def test_an_override_with_a_password_is_refused():
    with pytest.raises(ValidationError) as info:
        PipelineParams(overrides=["train.epochs=3", SECRET])
    error = params_error(info.value, "deployment")
    assert isinstance(error, ConfigError)
    msg = str(error)
    assert msg.startswith("deployment: parameter 'overrides': ")
    assert "MTL_OPTUNA_STORAGE" in msg and "hunter2" not in msg and "mtl:***@db" in msg
    schema = PipelineParams.model_json_schema()
    with pytest.raises(jsonschema.ValidationError):  # the server refuses it too
        jsonschema.validate({"overrides": [SECRET]}, schema)
    jsonschema.validate({"overrides": ["search.storage=postgresql://mtl@db/optuna"]}, schema)
    PipelineParams(overrides=["search.storage=postgresql://mtl@db/optuna"])


# --------------------------------------------------------------------------- partial params


DEPLOYMENT = PipelineParams(
    config="penguins", n_trials=20, overrides=["loss.penalty_scope=all"]
).model_dump(mode="json")


def test_a_run_that_sends_one_field_keeps_the_deployments_others():
    merged = PipelineParams.merged(DEPLOYMENT, {"n_trials": 5})
    assert merged.n_trials == 5
    assert merged.model_dump(mode="json") == {**DEPLOYMENT, "n_trials": 5}


def test_a_field_sent_as_null_goes_back_to_the_configs_value():
    assert PipelineParams.merged(DEPLOYMENT, {"n_trials": None}).n_trials is None


def test_a_whole_object_replaces_the_deployments():
    whole = PipelineParams(config="default", executor="pool").model_dump(mode="json")
    assert PipelineParams.merged(DEPLOYMENT, whole).model_dump(mode="json") == whole


def test_a_merge_is_still_checked():
    with pytest.raises(ValidationError, match="n_trails"):
        PipelineParams.merged(DEPLOYMENT, {"n_trails": 5})
    with pytest.raises(ValidationError, match="n_trials"):
        PipelineParams.merged(DEPLOYMENT, {"n_trials": 0})
    with pytest.raises(ValidationError, match="config"):  # the dashboard route: bundled only
        PipelineParams.merged(DEPLOYMENT, {"config": "/etc/passwd"})


def test_executor_is_a_typed_override():
    params = PipelineParams(executor="pool", n_workers=3)
    assert params.config_overrides() == ["search.n_workers=3", "search.executor=pool"]
    with pytest.raises(ValidationError):
        PipelineParams(executor="cluster")


def test_trial_worker_params_refuse_unknown_keys():
    from flows.params import TrialWorkerParams

    base = {
        "config": {"data": {}},
        "experiment_id": "1",
        "parent_run_id": "abc",
        "data_fingerprint": "f" * 64,
        "lock_key": "study-123",
    }
    assert TrialWorkerParams(**base).worker == 0
    with pytest.raises(ValidationError, match="password"):
        TrialWorkerParams(**base, password="x")
    assert TrialWorkerParams.model_json_schema()["additionalProperties"] is False


# --------------------------------------------------------------------------- form bounds


@pytest.mark.parametrize("model", [PipelineParams, ScoreParams])
def test_number_bounds_render_as_json_schema_keywords(model):
    """Prefect's form and server read ``minimum``/``maximum``, not raw ``ge``/``le`` keys."""
    schema = model.model_json_schema()
    numbers = 0
    for name, prop in schema["properties"].items():
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") not in ("integer", "number"):
                continue
            numbers += 1
            assert not {"ge", "le", "gt", "lt"} & set(branch), (name, branch)
            assert {"minimum", "exclusiveMinimum"} & set(branch), (name, branch)
    assert numbers >= 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"n_trials": 0} if model is PipelineParams else {"chunk_rows": 5}, schema
        )
