"""End to end: the mtl-pipeline flow on embedded defaults (Prefect harness, SQLite MLflow).

Each test trains real (tiny) models and asserts on what a user looks at: the
MLflow runs, the registered versions and aliases, the Optuna study, and the
champion model scoring raw rows in a fresh process.
"""

import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from flows.params import PipelineParams
from flows.pipeline import mtl_pipeline
from mtl_core.config import load_config
from mtl_core.errors import SearchError
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
    "search": {"n_trials": 3, "pruner_startup_trials": 2, "pruner_warmup_epochs": 2},
    "tracking": {"experiment": "tiny"},
}


def write_config(tmp_path: Path, name: str = "tiny.yaml", **sections) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def children_of(client: MlflowClient, run) -> list:
    return client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )


def predict(model_uri: str, rows: Path, out: Path) -> subprocess.CompletedProcess:
    """``mtl predict`` in a fresh process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "predict",
            "--model-uri",
            model_uri,
            "--input",
            str(rows),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def study_of(config_path: Path):
    cfg = load_config(config_path)
    return search.open_study(cfg, search.resolve_storage(cfg.search))


def test_pipeline_end_to_end(prefect_harness, mlflow_store, tmp_path):
    config = write_config(tmp_path)
    result = mtl_pipeline(PipelineParams.local(config))
    client = MlflowClient(mlflow_store)

    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.tags["config.file"] == str(config)
    assert parent.info.run_name.startswith("tiny | tiny | ")
    # The full flattened config, with tasks keyed by name.
    assert parent.data.params["search.n_trials"] == "3"
    assert parent.data.params["tasks.cls.type"] == "binary"
    assert {"tasks.reg.weight", "loss.l1", "loss.l2", "train.lr"} <= set(parent.data.params)
    for key in (
        "test/objective",
        "test/delta_m",
        "test/reg/rmse",
        "test/cls/auc",
        "baseline/test/cls/auc",
        "val/cls/auc",
    ):
        assert key in parent.data.metrics, key
    # The dataset is an input of the run, identified by its fingerprint.
    (dataset_input,) = parent.inputs.dataset_inputs
    assert dataset_input.dataset.digest == parent.data.tags["dataset.fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/optimization_history.png" in artifacts
    assert "figures/test_metrics_vs_baselines.png" in artifacts

    children = children_of(client, parent)
    assert len(children) == 3
    assert sorted(c.info.run_name for c in children) == ["trial-000", "trial-001", "trial-002"]
    keys = {frozenset(c.data.params) for c in children}
    assert len(keys) == 1, "every trial logs the same param keys, so MLflow can compare them"
    assert {"tasks.reg.weight", "tasks.cls.weight", "loss.l1", "loss.l2", "train.lr"} <= set(
        next(iter(keys))
    )
    for child in children:
        assert child.data.tags["trial.state"] in {"COMPLETE", "PRUNED"}
        history = client.get_metric_history(child.info.run_id, "val/objective")
        assert len(history) >= 2 and [m.step for m in history] == sorted(m.step for m in history)
        weights = [float(child.data.params[f"tasks.{t}.weight"]) for t in ("reg", "cls")]
        assert sum(weights) == pytest.approx(2.0)  # on the simplex, scaled to T

    version = client.get_model_version_by_alias("tiny", "champion")
    assert str(version.version) == result["model_version"] == "1"
    assert version.run_id == parent.info.run_id

    # The champion loads by alias in a fresh process and scores raw rows.
    rows = pd.DataFrame({f"x{j}": [0.1 * j, -0.2, 1.5] for j in range(10)})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "preds.csv"
    proc = predict("models:/tiny@champion", tmp_path / "rows.csv", out)
    assert proc.returncode == 0, proc.stderr
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["reg", "cls", "cls_proba"]
    assert len(preds) == 3
    assert preds["cls"].isin([0, 1]).all() and preds["cls_proba"].between(0, 1).all()

    # Rows without the model's features: one line naming the file and the missing columns.
    rows.drop(columns=["x3"]).to_csv(tmp_path / "short.csv", index=False)
    proc = predict("models:/tiny@champion", tmp_path / "short.csv", tmp_path / "short-out.csv")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mtl: error: {tmp_path / 'short.csv'}: rows do not match the model's input schema "
        "(Model is missing inputs ['x3'].)"
    ]


def test_rerun_resumes_the_study(prefect_harness, mlflow_store, tmp_path):
    config = write_config(tmp_path, search={"n_trials": 3})
    mtl_pipeline(PipelineParams.local(config))
    second = mtl_pipeline(PipelineParams.local(config, n_trials=5))

    study = study_of(config)
    assert search.finished_trials(study) == 5
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3, 4]
    client = MlflowClient(mlflow_store)
    assert len(children_of(client, client.get_run(second["parent_run_id"]))) == 2


def test_two_workers_share_one_journal_study(prefect_harness, mlflow_store, tmp_path):
    config = write_config(tmp_path, search={"n_trials": 4, "n_workers": 2})
    result = mtl_pipeline(PipelineParams.local(config))

    cfg = load_config(config)
    assert search.resolve_storage(cfg.search).endswith("optuna-journal.log")
    study = study_of(config)
    assert search.finished_trials(study) == 4
    assert len({t.number for t in study.trials}) == 4
    client = MlflowClient(mlflow_store)
    children = children_of(client, client.get_run(result["parent_run_id"]))
    assert sorted(c.data.tags["trial.number"] for c in children) == ["0", "1", "2", "3"]


def test_all_trials_diverging_fails_the_run(prefect_harness, mlflow_store, tmp_path):
    config = write_config(
        tmp_path,
        # Plain SGD at a learning rate of 100+ overflows within the first epoch.
        train={"grad_clip": None, "optimizer": "sgd"},
        search={"n_trials": 2, "lr": {"low": 1.0e2, "high": 1.0e3}, "l1": None, "l2": None},
        tracking={"experiment": "diverge"},
    )
    with pytest.raises(SearchError, match="no trial completed"):
        mtl_pipeline(PipelineParams.local(config))

    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("diverge")
    (parent,) = client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId IS NULL")
    assert parent.info.status == "FAILED"
    assert "NonFiniteLossError" in parent.data.tags["error"]
    children = children_of(client, parent)
    assert len(children) == 2 and {c.info.status for c in children} == {"FAILED"}
    study = study_of(config)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all("non-finite" in t.user_attrs["fail_reason"] for t in study.trials)


def test_worse_model_does_not_take_champion(prefect_harness, mlflow_store, tmp_path):
    good = write_config(tmp_path, "good.yaml", tracking={"experiment": "promo"})
    first = mtl_pipeline(PipelineParams.local(good))
    assert first["alias"] == "champion"

    # One epoch at a tiny learning rate, in a separate study: clearly worse.
    bad = write_config(
        tmp_path,
        "bad.yaml",
        train={"epochs": 1},
        search={"n_trials": 1, "study_name": "promo-bad", "lr": {"low": 1e-6, "high": 2e-6}},
        tracking={"experiment": "promo"},
    )
    second = mtl_pipeline(PipelineParams.local(bad))
    assert second["test_objective"] > first["test_objective"]
    assert second["alias"] == "challenger"

    client = MlflowClient(mlflow_store)
    assert str(client.get_model_version_by_alias("promo", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("promo", "challenger").version) == "2"
    tags = client.get_run(second["parent_run_id"]).data.tags
    assert tags["promotion.decision"] == "challenger"
    assert "does not beat champion version 1" in tags["promotion.summary"]
    metrics = client.get_run(second["parent_run_id"]).data.metrics
    assert metrics["promotion/champion_test_objective"] == pytest.approx(first["test_objective"])
