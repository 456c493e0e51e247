"""A model trained once per session for the scoring and serving tests.

It learns two tasks from a CSV with six numeric features, one categorical feature and a
row-id column (``rid``), so that scoring exercises the id, both kinds of drift test and
text columns. Tests that use it get its store in their environment (``scoring_store``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from scoring_data import make_rows


@dataclass
class TrainedModel:
    """Where the session's scoring model lives."""

    state: Path
    tracking_uri: str
    name: str
    experiment: str
    run_id: str
    version: str

    @property
    def champion(self) -> str:
        return f"models:/{self.name}@champion"

    def env(self) -> dict[str, str]:
        return {"MTL_STATE_DIR": str(self.state), "MLFLOW_TRACKING_URI": self.tracking_uri}


@pytest.fixture(scope="session")
def scoring_model(prefect_harness, tmp_path_factory) -> TrainedModel:
    """Train the tiny two-task model once (2 trials, 4 epochs) into a store of its own."""
    from flows.params import PipelineParams
    from flows.pipeline import mtl_pipeline

    root = tmp_path_factory.mktemp("scoring-model")
    state = root / "state"
    state.mkdir()
    make_rows(800, seed=0).to_csv(root / "train.csv", index=False)
    config = {
        "data": {
            "source": "file",
            "path": str(root / "train.csv"),
            "id_column": "rid",
            "tasks": [
                {"name": "reg", "column": "y0", "type": "regression"},
                {"name": "cls", "column": "y1", "type": "binary"},
            ],
        },
        "model": {"hidden": [16]},
        "train": {"epochs": 4, "batch_size": 64, "patience": 3, "device": "cpu"},
        "search": {"n_trials": 2, "pruner": "none"},
        "tracking": {"experiment": "scoring-tiny"},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    trained = TrainedModel(state, f"sqlite:///{state / 'mlflow.db'}", "scoring-tiny", "", "", "")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in trained.env().items():
            mp.setenv(key, value)
        result = mtl_pipeline(PipelineParams.local(root / "tiny.yaml"))
    trained.experiment = "scoring-tiny"
    trained.run_id = result["parent_run_id"]
    trained.version = result["model_version"]
    return trained


@pytest.fixture
def scoring_store(scoring_model, monkeypatch) -> TrainedModel:
    """The scoring model's store, as this test's MLflow store and state folder."""
    for key, value in scoring_model.env().items():
        monkeypatch.setenv(key, value)
    return scoring_model
