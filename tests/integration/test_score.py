"""The mtl-score flow on embedded defaults, with the session's tiny model (see conftest).

Each test scores real rows with the real pyfunc model and asserts on what a user looks at:
the Parquet predictions, the MLflow scoring run, the drift flag and the Prefect artifacts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scoring_data import FEATURES, make_rows

import flows.score
from flows.params import ScoreParams
from flows.score import mtl_score
from mtl_core.errors import DriftError

pytestmark = pytest.mark.integration

PRED_COLUMNS = ["rid", "reg", "cls", "cls_proba", "model_version"]


def scoring_runs(store, experiment: str = "scoring-tiny-scoring") -> list:
    client = MlflowClient(store.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=100)


def run_of(store, result: dict):
    return MlflowClient(store.tracking_uri).get_run(result["scoring_run_id"])


def flow_run_artifacts(flow_run_id: str) -> dict[str, dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def test_scores_a_csv_in_chunks_with_ids_version_and_tracking(scoring_store, tmp_path):
    store = scoring_store
    batch = make_rows(2500, seed=1).drop(columns=["y0", "y1"]).assign(note="ignored")
    batch.to_csv(tmp_path / "batch.csv", index=False)

    result = mtl_score(
        ScoreParams(
            input=str(tmp_path / "batch.csv"),
            output=str(tmp_path / "out" / "{date}-v{version}.parquet"),
            model_uri=store.champion,
            chunk_rows=1000,
        )
    )

    out = Path(result["output"])
    assert out.parent == tmp_path / "out" and out.name.endswith(f"-v{store.version}.parquet")
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left
    preds = pd.read_parquet(out)
    assert list(preds.columns) == PRED_COLUMNS
    assert preds["rid"].tolist() == batch["rid"].tolist()  # every row, in order, with its id
    assert set(preds["model_version"]) == {store.version}
    # The same numbers as one call of the model on the whole frame.
    model = mlflow.pyfunc.load_model(f"models:/{store.name}/{store.version}")
    whole = model.predict(batch[FEATURES])
    np.testing.assert_allclose(preds["reg"], whole["reg"], rtol=1e-5)
    np.testing.assert_allclose(preds["cls_proba"], whole["cls_proba"], rtol=1e-6)
    assert (preds["cls"].to_numpy() == whole["cls"].to_numpy()).all()
    assert result["rows"] == 2500 and result["model_version"] == store.version
    assert result["alias"] == "champion" and not result["drift_flagged"]

    # The MLflow scoring run: tagged, linked to the training run and the logged model.
    run = run_of(store, result)
    assert run.info.status == "FINISHED"
    assert (
        run.info.experiment_id
        == MlflowClient(store.tracking_uri)
        .get_experiment_by_name("scoring-tiny-scoring")
        .experiment_id
    )
    tags = run.data.tags
    assert tags["model.name"] == store.name and tags["model.version"] == store.version
    assert tags["model.alias"] == "champion" and tags["training.run_id"] == store.run_id
    assert tags["drift.flagged"] == "false"
    (model_input,) = run.inputs.model_inputs
    version = MlflowClient(store.tracking_uri).get_model_version(store.name, store.version)
    assert version.source == f"models:/{model_input.model_id}"
    m = run.data.metrics
    assert m["rows/scored"] == 2500 and m["rows/chunks"] == 3 and m["rows/files"] == 1
    shares = [v for k, v in m.items() if k.startswith("scores/cls/share/")]
    assert len(shares) == 2 and sum(shares) == pytest.approx(1.0)
    assert shares == pytest.approx([(whole["cls"] == c).mean() for c in (0, 1)])
    assert m["scores/reg/p05"] < m["scores/reg/p50"] < m["scores/reg/p95"]
    assert 0 <= m["scores/cls_proba/p01"] <= m["scores/cls_proba/p99"] <= 1
    assert m["drift/flagged"] == 0 and m["drift/rows_compared"] == 2500
    assert {f"drift/{f}/psi" for f in FEATURES} <= set(m)
    client = MlflowClient(store.tracking_uri)
    names = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert names == {"drift/report.json", "drift/report.md", "drift/psi.png"}
    report = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "drift/report.json", str(tmp_path))
        ).read_text()
    )
    assert report["flagged"] is False and len(report["features"]) == len(FEATURES)

    # The Prefect artifacts: the drift table, the PNG and a summary.
    artifacts = flow_run_artifacts(tags["prefect.flow_run_id"])
    assert artifacts["mtl-drift-report"].type == "table"
    assert {r["feature"] for r in json.loads(artifacts["mtl-drift-report"].data)} == set(FEATURES)
    assert artifacts["mtl-drift-plot"].type == "image"
    assert artifacts["mtl-drift-plot"].data.startswith("data:image/png;base64,")
    assert run.info.run_id in artifacts["mtl-scoring-summary"].data


def test_the_alias_is_resolved_once_for_the_whole_run(scoring_store, tmp_path, monkeypatch):
    store = scoring_store
    client = MlflowClient(store.tracking_uri)
    first = client.get_model_version(store.name, store.version)
    second = client.create_model_version(store.name, first.source, run_id=first.run_id)
    (tmp_path / "in").mkdir()
    for i in range(2):  # a folder of two Parquet files
        rows = make_rows(250, seed=10 + i).drop(columns=["y0", "y1"])
        rows.to_parquet(tmp_path / "in" / f"part-{i}.parquet", row_group_size=100)

    def promote_after_first_chunk(chunks: int, rows: int) -> None:
        if chunks == 1:  # a promotion lands while the batch is being scored
            client.set_registered_model_alias(store.name, "champion", second.version)

    monkeypatch.setattr(flows.score, "chunk_done", promote_after_first_chunk)
    try:
        result = mtl_score(
            ScoreParams(
                input=str(tmp_path / "in"),
                output=str(tmp_path / "preds.parquet"),
                model_uri=store.champion,
                chunk_rows=100,
            )
        )
        assert client.get_model_version_by_alias(store.name, "champion").version == second.version
    finally:
        client.set_registered_model_alias(store.name, "champion", store.version)
    preds = pd.read_parquet(tmp_path / "preds.parquet")
    assert len(preds) == 500 and result["files"] == 2
    assert set(preds["model_version"]) == {store.version}  # every row: the version at the start
    assert run_of(store, result).data.tags["model.version"] == store.version


def test_an_interrupted_run_leaves_no_partial_output(scoring_store, tmp_path, monkeypatch):
    store = scoring_store
    make_rows(600, seed=3).to_parquet(tmp_path / "batch.parquet", row_group_size=100)
    final = tmp_path / "out" / "preds.parquet"
    final.parent.mkdir()
    final.write_bytes(b"the previous run's predictions")
    before = {r.info.run_id for r in scoring_runs(store)}

    def crash_on_chunk_3(chunks: int, rows: int) -> None:
        if chunks == 3:
            raise OSError("No space left on device")

    monkeypatch.setattr(flows.score, "chunk_done", crash_on_chunk_3)
    with pytest.raises(OSError, match="No space left"):
        mtl_score(
            ScoreParams(
                input=str(tmp_path / "batch.parquet"),
                output=str(final),
                model_uri=store.champion,
                chunk_rows=100,
            )
        )
    assert final.read_bytes() == b"the previous run's predictions"  # untouched
    assert [p.name for p in final.parent.iterdir()] == ["preds.parquet"]  # no temporary left
    (run,) = [r for r in scoring_runs(store) if r.info.run_id not in before]
    assert run.info.status == "FAILED"
    assert "No space left" in run.data.tags["error"]


def test_a_shifted_batch_is_flagged_and_can_fail_the_run(scoring_store, tmp_path):
    store = scoring_store
    shifted = make_rows(3000, seed=4, shift={"x0": 0.5, "x3": -0.5}).drop(columns=["y0", "y1"])
    shifted.to_parquet(tmp_path / "shifted.parquet")

    flagged = mtl_score(
        ScoreParams(
            input=str(tmp_path / "shifted.parquet"),
            output=str(tmp_path / "flagged.parquet"),
            model_uri=store.champion,
        )
    )
    assert flagged["drift_flagged"] and sorted(flagged["drifted"]) == ["x0", "x3"]
    assert len(pd.read_parquet(tmp_path / "flagged.parquet")) == 3000  # flagged, still written
    run = run_of(store, flagged)
    assert run.data.tags["drift.flagged"] == "true" and run.data.metrics["drift/n_drifted"] == 2
    assert run.data.metrics["drift/x0/psi"] >= 0.1 > run.data.metrics["drift/x1/psi"]

    before = {r.info.run_id for r in scoring_runs(store)}
    with pytest.raises(DriftError, match=r"2 of 7 feature\(s\) drifted"):
        mtl_score(
            ScoreParams(
                input=str(tmp_path / "shifted.parquet"),
                output=str(tmp_path / "refused.parquet"),
                model_uri=store.champion,
                fail_on_drift=True,
            )
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flagged.parquet", "shifted.parquet"]
    (failed,) = [r for r in scoring_runs(store) if r.info.run_id not in before]
    assert failed.info.status == "FAILED" and "DriftError" in failed.data.tags["error"]


def test_a_mismatched_input_is_one_line_and_writes_nothing(scoring_store, tmp_path):
    store = scoring_store
    make_rows(50, seed=5).drop(columns=["x3"]).to_csv(tmp_path / "short.csv", index=False)
    before = len(scoring_runs(store))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "score",
            "--input",
            str(tmp_path / "short.csv"),
            "--output",
            str(tmp_path / "preds.parquet"),
            "--model-uri",
            store.champion,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mtl: error: {tmp_path / 'short.csv'}: rows do not match the model's input columns: "
        f"missing ['x3'] (the model expects {FEATURES})"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.csv"]
    assert len(scoring_runs(store)) == before  # no run was started


def test_the_model_is_a_logged_model_of_its_training_run(scoring_store, tmp_path):
    store = scoring_store
    client = MlflowClient(store.tracking_uri)
    run = client.get_run(store.run_id)
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert logged.source_run_id == store.run_id and logged.name == "model"
    assert str(logged.status).endswith("READY")
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]  # Models column
    version = client.get_model_version_by_alias(store.name, "champion")
    assert version.source == f"models:/{logged.model_id}" and version.run_id == store.run_id
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [
        {"name": store.name, "version": int(version.version)}
    ]
    assert "test/objective" in {m.key for m in logged.metrics}
    assert logged.params["loss.l2"] == run.data.params["best.loss.l2"]

    card = version.description
    assert card.startswith(f"# Model card: {store.name}")
    for fragment in (
        run.data.tags["dataset.fingerprint"],
        "| cls | binary | `y1` |",
        f"Δm (test) = **{run.data.metrics['test/delta_m']:+.2f}%**",
        "| `loss.l2` |",
        store.run_id,
        "row id: `rid`",
    ):
        assert fragment in card, fragment
    files = {f.path for f in client.list_logged_model_artifacts(logged.model_id)}
    assert {"MLmodel", "model_card.md", "requirements.txt", "input_example.json"} <= files

    info = mlflow.models.get_model_info(store.champion)
    assert info.metadata["id_column"] == "rid"
    assert info.signature.inputs.input_names() == FEATURES  # the id is not a feature
    inner = mlflow.pyfunc.load_model(store.champion).unwrap_python_model()
    assert inner.profile.features == FEATURES
    assert inner.profile.settings["psi_threshold"] > 0
