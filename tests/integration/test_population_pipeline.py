"""End to end: the mtl-pipeline flow with a batched search and k-fold cross-validation."""

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.params import PipelineParams
from flows.pipeline import mtl_pipeline
from mtl_core.config import load_config
from mtl_core.integrations import search

pytestmark = pytest.mark.integration

TINY = {
    "data": {
        "source": "synthetic",
        "synthetic": {"n_rows": 600, "dim": 10, "correlation": 0.8, "binarize": ["y1"]},
        "tasks": [
            {"name": "reg", "column": "y0", "type": "regression"},
            {"name": "cls", "column": "y1", "type": "binary"},
        ],
    },
    "model": {"hidden": [16]},
    "train": {"epochs": 6, "batch_size": 64, "patience": 3},
    "search": {
        "n_trials": 5,
        "population": 3,
        "cv_folds": 3,
        "pruner_startup_trials": 2,
        "pruner_warmup_epochs": 2,
    },
    "tracking": {"experiment": "tiny-population"},
}


def test_pipeline_with_a_population_and_cross_validation(prefect_harness, mlflow_store, tmp_path):
    path = Path(tmp_path / "tiny.yaml")
    path.write_text(yaml.safe_dump(TINY))
    result = mtl_pipeline(PipelineParams.local(path))
    client = MlflowClient(mlflow_store)

    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.population"] == "3"
    assert parent.data.params["search.cv_folds"] == "3"
    assert "test/objective" in parent.data.metrics and "test/delta_m" in parent.data.metrics

    cfg = load_config(path)
    study = search.open_study(cfg, search.resolve_storage(cfg.search))
    assert search.finished_trials(study) == 5  # batches of 3 then 2, never more

    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == [f"trial-{n:03d}" for n in range(5)]
    assert len({frozenset(c.data.params) for c in children}) == 1  # the same keys everywhere
    for child in children:
        state = child.data.tags["trial.state"]
        assert state in {"COMPLETE", "PRUNED"}
        history = client.get_metric_history(child.info.run_id, "val/objective")
        assert len(history) >= 2
        if state == "COMPLETE":
            m = child.data.metrics
            folds = [m[f"val/fold_objective/{j}"] for j in range(3)]
            assert m["val/best_objective"] == pytest.approx(sum(folds) / 3)
            assert m["val/fold_std"] > 0
    assert result["alias"] == "champion"
