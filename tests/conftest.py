"""Test session set-up: an isolated state folder and no stray servers.

The state folder (Prefect home, MLflow store, Optuna studies) is a fresh
temporary directory for the whole session, set before ``flows`` is imported,
and any server a developer exported in their shell is ignored: tests that
need a server start their own.
"""

import os
import tempfile

for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MTL_OPTUNA_STORAGE"):
    os.environ.pop(var, None)
os.environ["MTL_STATE_DIR"] = tempfile.mkdtemp(prefix="mtl-test-state-")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property-based tests: `make test` replays the same 200 examples every time (derandomized), so
# CI is repeatable; HYPOTHESIS_PROFILE=deep explores 5,000 fresh ones to hunt for new failures.
settings.register_profile("ci", max_examples=200, derandomize=True)
settings.register_profile("deep", max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import flows  # noqa: E402,F401  (applies the embedded defaults for this session)


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (starting one takes ~20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store and Optuna/state folder for one test."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("MTL_STATE_DIR", str(state))
    uri = f"sqlite:///{state / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    # tracking.get_client() also sets MLflow's process-wide tracking and registry URIs; left
    # as they are, the next test would talk to this test's store.
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
