"""The ``mtl`` command's contract for bad input: one line, exit status 2, no traceback."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def mtl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mtl: error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_config(tmp_path):
    assert_one_line_error(
        mtl("run", "--config", str(tmp_path / "nope.yaml")), "nope.yaml", "not found"
    )


def test_invalid_value_names_file_and_key(tmp_path):
    proc = mtl("run", "--config", "default", "--set", "train.lr=-1")
    assert_one_line_error(proc, "default.yaml", "train.lr", "greater than 0")


def test_unknown_key_is_rejected(tmp_path):
    proc = mtl("run", "--config", "default", "--set", "train.learning_rate=0.1")
    assert_one_line_error(proc, "train.learning_rate", "unknown key")


def test_pool_mode_needs_a_server_and_a_shared_database(tmp_path, monkeypatch):
    pool = ("run", "--config", "default", "--set", "search.executor=pool")
    assert_one_line_error(mtl(*pool), "search.executor 'pool'", "PREFECT_API_URL")
    # A server is configured (never reached: the check comes first), the study a local file.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    for storage in ("sqlite:///x.db", str(tmp_path / "study.log")):
        proc = mtl(*pool, "--set", f"search.storage={storage}")
        assert_one_line_error(proc, "on this machine only", "PostgreSQL")
    state = os.environ["MTL_STATE_DIR"]
    assert not any(name.endswith(".db") for name in os.listdir(state))


def test_missing_data_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  source: file\n  path: /nonexistent/rows.csv\n"
        "  tasks: [{name: a, column: y, type: regression}]\n"
    )
    assert_one_line_error(mtl("run", "--config", str(config)), "/nonexistent/rows.csv", "not found")
    # Nothing was written: the state folder holds no MLflow store or study.
    state = os.environ["MTL_STATE_DIR"]
    assert not any(name.endswith(".db") for name in os.listdir(state))


def test_predict_with_unknown_model(tmp_path, mlflow_store):
    rows = tmp_path / "rows.csv"
    rows.write_text("x0,x1\n1,2\n")
    proc = mtl(
        "predict",
        "--model-uri",
        "models:/no-such-model@champion",
        "--input",
        str(rows),
        "--output",
        str(tmp_path / "out.csv"),
    )
    assert_one_line_error(proc, "models:/no-such-model@champion")
    assert not (tmp_path / "out.csv").exists()


def test_predict_with_missing_input(tmp_path):
    proc = mtl(
        "predict",
        "--model-uri",
        "models:/x@champion",
        "--input",
        str(tmp_path / "missing.csv"),
        "--output",
        str(tmp_path / "out.csv"),
    )
    assert_one_line_error(proc, "missing.csv", "not found")
