"""The embedded defaults that ``flows`` applies to the environment at import."""

from __future__ import annotations

import mlflow.telemetry.utils as telemetry

from flows.settings import configure_environment


def test_mlflow_telemetry_is_off_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.setenv("MTL_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    configure_environment()
    assert telemetry.MLFLOW_DISABLE_TELEMETRY.get() is True

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # a user's own choice is kept
    configure_environment()
    assert telemetry.MLFLOW_DISABLE_TELEMETRY.get() is False


def test_the_test_session_imported_mlflow_with_telemetry_off():
    # conftest imports flows before anything imports mlflow, as the entry points do.
    from mlflow.telemetry.client import get_telemetry_client

    assert get_telemetry_client() is None
