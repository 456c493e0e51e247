"""The flow's parameters: bundled configs only from the dashboard, no booleans, no passwords."""

from __future__ import annotations

import typing

import jsonschema
import pytest
from pydantic import ValidationError

from flows.params import PipelineParams, params_error
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
