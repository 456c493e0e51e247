"""The flows' typed parameters: a run's partial ``params`` merged into its deployment's."""

import pytest
from pydantic import ValidationError

from flows.params import PipelineParams

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
    whole = PipelineParams(config="default", n_workers=2).model_dump(mode="json")
    assert PipelineParams.merged(DEPLOYMENT, whole).model_dump(mode="json") == whole


def test_a_merge_is_still_checked():
    with pytest.raises(ValidationError, match="n_trails"):
        PipelineParams.merged(DEPLOYMENT, {"n_trails": 5})
    with pytest.raises(ValidationError, match="n_trials"):
        PipelineParams.merged(DEPLOYMENT, {"n_trials": 0})
