"""The flows' typed parameters: a run's partial ``params`` merged into its deployment's."""

import pytest
from pydantic import ValidationError

from flows.params import PipelineParams, TrialWorkerParams

DEPLOYMENT = PipelineParams(
    config="/srv/configs/tiny.yaml", n_trials=20, overrides=["loss.penalty_scope=all"]
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


def test_executor_is_a_typed_override():
    params = PipelineParams(executor="pool", n_workers=3)
    assert params.config_overrides() == ["search.n_workers=3", "search.executor=pool"]
    with pytest.raises(ValidationError):
        PipelineParams(executor="cluster")


def test_trial_worker_params_refuse_unknown_keys():
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
