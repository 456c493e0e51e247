"""Test session set-up: an isolated state folder and no stray servers.

The state folder (Prefect home, MLflow store, Optuna studies) is a fresh
temporary directory for the whole session (removed when it ends), set before ``flows`` is imported,
and any server a developer exported in their shell is ignored: tests that
need a server start their own.
"""

import atexit
import os
import shutil
import tempfile

MLFLOW_URIS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# PREFECT_HOME too: xdist workers inherit the controller's, and each needs its own.
for var in ("PREFECT_API_URL", "PREFECT_HOME", *MLFLOW_URIS, "MTL_OPTUNA_STORAGE"):
    os.environ.pop(var, None)
os.environ["MTL_STATE_DIR"] = tempfile.mkdtemp(prefix="mtl-test-state-")
atexit.register(shutil.rmtree, os.environ["MTL_STATE_DIR"], ignore_errors=True)

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


@pytest.fixture(autouse=True)
def _forget_mlflow_uris():
    """After each test, MLflow has no store again, as at the start of the session.

    ``tracking.get_client()`` sets MLflow's process-wide tracking and registry URIs, and
    MLflow copies them into ``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI`` for
    subprocesses. Left as they are, the next test in this process (whichever file it
    comes from, in whatever order an xdist worker runs them) and every server it starts
    would train, register or look up models in this test's store. Runs after the test's
    own ``monkeypatch`` has been undone.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    yield
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
    for key in MLFLOW_URIS:
        os.environ.pop(key, None)
