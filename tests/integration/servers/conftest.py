"""The real stack for the server tests: ``infra/local/up`` once, ``infra/local/down`` always.

One stack (PostgreSQL, Prefect server, MLflow server, one process worker)
serves every test of this package and stops after the last one. It lives in a
state folder of its own under ``.state/test-servers/`` on free ports, so that a
developer's stack (``.state/infra``, default ports) and a second test session
are left alone. The folder is deleted at the end; its logs are kept in
``.state/test-artifacts/server-logs/``.

Tests read addresses from the :class:`Stack`; each test marked ``servers`` also
gets ``env.sh``'s variables in ``os.environ``, for its own duration only, so
nothing leaks into the tests that run on embedded defaults.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.stack import bundled_config, free_ports

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / ".state" / "test-artifacts"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT = 240  # seconds for one tiny flow run, pickup included, on a busy 2-core machine

# 600 rows, 10 features, two tasks: a flow run trains in seconds.
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
    "train": {"epochs": 5, "batch_size": 64, "patience": 3, "device": "cpu"},
    "search": {"n_trials": 3, "pruner": "none"},
    "tracking": {"experiment": "servers-tiny"},
}


@dataclass
class Stack:
    """A running local stack: addresses, the variables of its ``env.sh``, and controls."""

    dir: Path
    script_env: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    @property
    def mlflow(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def optuna(self) -> str:
        return self.env["MTL_OPTUNA_STORAGE"]

    @property
    def pool(self) -> str:
        return self.env["MTL_WORK_POOL"]

    def infra(self, action: str, *components: str, timeout: float = 600) -> str:
        """Run ``infra/local/<action>``; its output, or a test failure showing it."""
        cmd = [str(REPO / "infra" / "local" / action), *components]
        proc = subprocess.run(
            cmd, env=self.script_env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            pytest.fail(f"{shlex.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}")
        return out

    def read_env_file(self) -> None:
        """Parse the ``export K=V`` lines ``up`` wrote to ``env.sh``."""
        for line in (self.dir / "env.sh").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                self.env[key] = value

    def prefect(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the Prefect REST API."""
        return httpx.request(method, f"{self.api}{path}", timeout=30, **kwargs)

    def mlflow_client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.mlflow, registry_uri=self.mlflow)

    def log_tail(self, component: str, lines: int = 60) -> str:
        path = self.dir / "logs" / f"{component}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="package")
def stack() -> Stack:
    """Start the stack in its own folder and ports; always stop it and keep its logs."""
    infra_dir = REPO / ".state" / "test-servers" / f"session-{os.getpid()}"
    shutil.rmtree(infra_dir, ignore_errors=True)
    infra_dir.mkdir(parents=True)
    pg, prefect_port, mlflow_port = free_ports(3)
    drop = {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MTL_OPTUNA_STORAGE", "PYTEST_CURRENT_TEST"}
    script_env = {k: v for k, v in os.environ.items() if k not in drop}
    script_env.update(
        {
            "MTL_INFRA_DIR": str(infra_dir),
            "MTL_PG_PORT": str(pg),
            "MTL_PREFECT_PORT": str(prefect_port),
            "MTL_MLFLOW_PORT": str(mlflow_port),
            "MTL_WORKER_NAME": "mtl-test-worker",
            "MTL_VENV": str(Path(sys.executable).parent.parent),
            # Inherited by the worker and so by every flow run: their own state folder, and a
            # worker that looks for new runs every 2 s instead of 15.
            "MTL_STATE_DIR": str(infra_dir / "flow-state"),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
    )
    stack = Stack(infra_dir, script_env)
    try:
        stack.infra("up")
        stack.read_env_file()
        yield stack
    finally:
        subprocess.run(
            [str(REPO / "infra" / "local" / "down")],
            env=script_env,
            timeout=300,
            capture_output=True,
            cwd=REPO,
        )
        logs = ARTIFACTS / "server-logs"
        shutil.rmtree(logs, ignore_errors=True)
        if (infra_dir / "logs").is_dir():
            shutil.copytree(infra_dir / "logs", logs, dirs_exist_ok=True)
        shutil.rmtree(infra_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _stack_env(request, monkeypatch):
    """What ``source env.sh`` gives a shell, for each ``servers`` test while it runs."""
    if request.node.get_closest_marker("servers") is None:
        return
    for key, value in request.getfixturevalue("stack").env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="package")
def tiny_config(stack) -> Path:
    """The tiny config, in the repository's configs/ for the session.

    A deployment runs bundled configs only (the dashboard offers configs/ as a
    dropdown), and the worker runs flows from the repository root.
    """
    with bundled_config("servers-tiny", TINY) as path:
        yield path


def _away_from_now(hours: int) -> int:
    """An hour of the day that no test session reaches, so that no schedule fires mid-test."""
    return (datetime.now(UTC).hour + hours) % 24


@dataclass
class Deployment:
    """The deployment made by ``mtl deploy`` for these tests."""

    id: str
    name: str
    data: dict[str, Any]
    crons: dict[str, str]
    cli_output: str


@pytest.fixture(scope="package")
def deployment(stack, tiny_config) -> Deployment:
    """``mtl deploy`` the tiny config to the stack's pool, as a developer would."""
    crons = {"nightly": f"0 {_away_from_now(12)} * * *", "weekly": f"30 {_away_from_now(13)} * * 3"}
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "deploy",
        "--config",
        str(tiny_config),
        "--name",
        "servers-test",
        "--nightly",
        crons["nightly"],
        "--nightly-trials",
        "3",
        "--weekly",
        crons["weekly"],
        "--weekly-trials",
        "6",
        "--weekly-workers",
        "2",
    ]
    proc = subprocess.run(
        cmd, env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resp = stack.prefect("GET", "/deployments/name/mtl-pipeline/servers-test")
    resp.raise_for_status()
    data = resp.json()
    return Deployment(data["id"], "mtl-pipeline/servers-test", data, crons, proc.stdout)


def run_params(config: Path, **changes: Any) -> dict[str, Any]:
    """A whole ``params`` object, as the dashboard's form sends it."""
    from flows.params import PipelineParams

    return {"params": PipelineParams(config=config.stem, **changes).model_dump(mode="json")}


def trigger(
    stack: Stack, deployment: Deployment, name: str, parameters: dict[str, Any], **extra: Any
) -> httpx.Response:
    """``POST /deployments/{id}/create_flow_run``: what the dashboard's Run button does."""
    body = {"name": name, "parameters": parameters, **extra}
    return stack.prefect("POST", f"/deployments/{deployment.id}/create_flow_run", json=body)


def wait_for_final(stack: Stack, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    """Poll a flow run until it is final; cancel it and fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = stack.prefect("GET", f"/flow_runs/{run_id}").json()
        if run["state_type"] in FINAL:
            return run
        time.sleep(1)
    # Free the deployment's concurrency slot for the tests that follow.
    stack.prefect(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING"}, "force": True},
    )
    pytest.fail(
        f"flow run {run_id} not final after {timeout:.0f} s (state "
        f"{run['state_type']}); worker log:\n{stack.log_tail('worker')}"
    )


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def parent_run(stack: Stack, experiment: str, flow_run_id: str):
    """The MLflow parent run of a flow run, found by its ``prefect.flow_run_id`` tag."""
    client = stack.mlflow_client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
    )
    return runs[0] if runs else None


def child_runs(stack: Stack, parent) -> list:
    """Every run of the parent's experiment whose ``mlflow.parentRunId`` is the parent."""
    client = stack.mlflow_client()
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=1000,
    )


def load_study(stack: Stack, name: str):
    """The Optuna study ``name`` in the stack's PostgreSQL, or None."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return optuna.load_study(study_name=name, storage=stack.optuna)
    except KeyError:
        return None


@dataclass
class TriggeredRun:
    """A flow run started through the REST API and waited for."""

    id: str
    experiment: str
    parameters: dict[str, Any]
    final: dict[str, Any]


@pytest.fixture(scope="package")
def pipeline_run(stack, deployment, tiny_config) -> TriggeredRun:
    """The deployment run by hand with custom parameters: 6 trials on 2 search workers."""
    experiment = "servers-main"
    params = run_params(tiny_config, experiment=experiment, n_trials=6, n_workers=2, epochs=5)
    resp = trigger(stack, deployment, "servers-main", params)
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]
    return TriggeredRun(run_id, experiment, params, wait_for_final(stack, run_id))
