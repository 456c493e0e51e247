"""Helpers of the crash and concurrency tests: ``mtl run`` as a subprocess, and what it left."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow import MlflowClient

from mtl_core.config import load_config
from mtl_core.integrations import search

DRIVER = Path(__file__).with_name("mtl_with_faults.py")
ROOT = Path(__file__).resolve().parents[2]

# Trials of well under a second; four of them, no baselines.
TINY = [
    "--config",
    "default",
    "--set",
    "data.synthetic.n_rows=300",
    "--set",
    "data.synthetic.dim=8",
    "--set",
    "model.hidden=[8]",
    "--set",
    "train.epochs=3",
    "--set",
    "search.n_trials=4",
    "--set",
    "baselines=false",
]


def overrides(experiment: str, *extra: str) -> list[str]:
    """``TINY`` in ``experiment``, with ``extra`` ``key=value`` overrides."""
    out = [*TINY, "--set", f"tracking.experiment={experiment}"]
    for item in extra:
        out += ["--set", item]
    return out


def start_mtl(
    state: Path, args: list[str], fault: str = "none", api_url: str | None = None, log=None
) -> subprocess.Popen:
    """``mtl run ARGS`` (through the fault driver) on the state folder ``state``.

    It runs in a session of its own, so that its whole process tree can be found by
    its process group. Without ``api_url`` it starts its own temporary Prefect API.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        MTL_STATE_DIR=str(state),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.Popen(
        [sys.executable, str(DRIVER), fault, "run", *args],
        env=env,
        cwd=str(ROOT),
        stdout=log or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@dataclass
class Finished:
    """A finished ``mtl run``: its pid, exit status and output."""

    pid: int
    returncode: int
    output: str


def run_mtl(
    state: Path, args: list[str], fault: str = "none", api_url: str | None = None
) -> Finished:
    """Run :func:`start_mtl` to its end (at most 5 minutes)."""
    proc = start_mtl(state, args, fault, api_url)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return Finished(proc.pid, proc.returncode, out)


def mlflow_client(state: Path) -> MlflowClient:
    """A client on the MLflow store of ``state``."""
    return MlflowClient(f"sqlite:///{state / 'mlflow.db'}")


def runs_of(client: MlflowClient, experiment: str) -> list:
    """Every run of ``experiment``, parents and trials."""
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def study_of(state: Path, experiment: str, journal: bool = False) -> optuna.Study:
    """The Optuna study of ``experiment`` in ``state`` (SQLite, or the journal of workers)."""
    cfg = load_config("default", [f"tracking.experiment={experiment}"])
    url = str(state / "optuna-journal.log") if journal else f"sqlite:///{state / 'optuna.db'}"
    return search.open_study(cfg, url)


def process_group(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are alive (not zombies)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(stat.parent.name))
    return out
