"""The real stack for the benchmarks that need one: ``infra/local/up`` in a folder of its own.

:func:`local_stack` starts the named components (all of them by default) in a
temporary state folder on free ports, so that a developer's stack and the test
sessions are left alone, yields the variables of its ``env.sh``, and always stops
it and deletes the folder. :func:`deploy`, :func:`trigger` and
:func:`wait_for_final` drive the Prefect server's REST API as the server tests do.

Like :mod:`bench.common`, this module imports neither Prefect, MLflow nor Optuna.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 at the time of asking."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


LOGS = REPO / ".state" / "bench-logs"


@contextlib.contextmanager
def local_stack(*components: str, logs: str | None = None) -> Iterator[dict[str, str]]:
    """Start ``infra/local/up COMPONENTS`` in a temporary folder; yields its ``env.sh`` values.

    The worker (when started) runs flows from this checkout with this interpreter's
    virtual environment, and looks for new flow runs every 2 s. With ``logs``, the
    stack's logs (the worker's holds every flow run's output) are kept in
    ``.state/bench-logs/<logs>/``.
    """
    folder = Path(tempfile.mkdtemp(prefix="mtl-bench-stack-"))
    pg, prefect, mlflow = free_ports(3)
    drop = {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MTL_OPTUNA_STORAGE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        MTL_INFRA_DIR=str(folder),
        MTL_PG_PORT=str(pg),
        MTL_PREFECT_PORT=str(prefect),
        MTL_MLFLOW_PORT=str(mlflow),
        MTL_WORKER_NAME="mtl-bench-worker",
        MTL_VENV=str(Path(sys.executable).parent.parent),
        MTL_STATE_DIR=str(folder / "flow-state"),
        PREFECT_WORKER_QUERY_SECONDS="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    try:
        proc = subprocess.run(
            [str(REPO / "infra" / "local" / "up"), *components],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"infra/local/up failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        values = {}
        for line in (folder / "env.sh").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                values[key] = value
        values["MTL_INFRA_DIR"] = str(folder)
        yield values
    finally:
        subprocess.run(
            [str(REPO / "infra" / "local" / "down")],
            env=env,
            cwd=REPO,
            capture_output=True,
            timeout=300,
        )
        if logs and (folder / "logs").is_dir():
            shutil.rmtree(LOGS / logs, ignore_errors=True)
            shutil.copytree(folder / "logs", LOGS / logs, symlinks=True)
        shutil.rmtree(folder, ignore_errors=True)


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """One call to the stack's Prefect REST API; the decoded JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def deploy(env: dict[str, str], config: Path, name: str) -> str:
    """``mtl deploy`` ``config`` as ``name`` (paused schedules); returns the pipeline's id."""
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy", "--config", str(config)]
        + ["--name", name, "--paused", "--limit", "0"],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mtl deploy failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return api(env, "GET", f"/deployments/name/mtl-pipeline/{name}")["id"]


def trigger(env: dict[str, str], deployment_id: str, name: str, params: dict[str, Any]) -> str:
    """Start a run of the deployment with these ``params`` fields; returns its id."""
    body = {"name": name, "parameters": {"params": params}}
    return api(env, "POST", f"/deployments/{deployment_id}/create_flow_run", body)["id"]


def wait_for_final(env: dict[str, str], run_id: str, timeout: float) -> dict[str, Any]:
    """Poll a flow run until it is final (``TimeoutError`` after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(env, "GET", f"/flow_runs/{run_id}")
        if run["state_type"] in FINAL:
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not final after {timeout:.0f} s")


@contextlib.contextmanager
def bundled_config(name: str, config: dict[str, Any]) -> Iterator[Path]:
    """The benchmark's config as ``configs/<name>.yaml`` while the benchmark runs.

    A deployment runs only the configs bundled in ``configs/`` (README: Trust boundary);
    the benchmarks and the server tests' ``servers-tiny`` put theirs there this way, and
    the file is removed at the end.
    """
    import yaml

    path = REPO / "configs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
