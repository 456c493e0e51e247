"""Pre-flight helpers of ``mtl run``; the command's cases are in tests/integration."""

from __future__ import annotations

import os

import pytest

from flows.params import PipelineParams
from flows.preflight import move_secret_storage, writable_place

URL = "postgresql+psycopg2://mtl:hunter2@db:5432/optuna"


def test_a_storage_password_moves_from_the_overrides_to_the_environment(monkeypatch):
    # Set, then removed: monkeypatch then removes what the function sets, at teardown.
    monkeypatch.setenv("MTL_OPTUNA_STORAGE", "")
    monkeypatch.delenv("MTL_OPTUNA_STORAGE")
    overrides = ["train.epochs=3", f"search.storage={URL}", "search.n_trials=5"]
    kept = move_secret_storage(overrides)
    assert kept == ["train.epochs=3", "search.n_trials=5"]
    assert os.environ["MTL_OPTUNA_STORAGE"] == URL
    # What the flow receives as parameters holds no password.
    assert "hunter2" not in PipelineParams(overrides=kept).model_dump_json()


def test_storage_without_a_password_stays_an_override_and_the_environment_wins(monkeypatch):
    monkeypatch.setenv("MTL_OPTUNA_STORAGE", "journal:/srv/study.log")
    plain = "search.storage=postgresql+psycopg2://mtl@db/optuna"
    assert move_secret_storage([plain]) == [plain]
    assert move_secret_storage([f"search.storage={URL}"]) == []
    assert os.environ["MTL_OPTUNA_STORAGE"] == "journal:/srv/study.log"  # it won before, too


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "new" / "deeper" / "x.db", None),
        (lambda d: d, "is a folder"),
        (lambda d: d / "file.txt" / "x.db", "is not a folder"),
    ],
)
def test_writable_place_creates_nothing(tmp_path, make, expected):
    (tmp_path / "file.txt").write_text("x")
    why = writable_place(make(tmp_path))
    assert (why is None) if expected is None else (expected in why)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
