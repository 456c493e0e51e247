"""Checks ``mtl run`` makes before the flow starts: bad input is one line, and nothing is written.

Inside the flow, an error surfaces only after Prefect has started, MLflow runs
exist and the study is stored, and Prefect logs it several times. So everything
that can be checked without running is checked here first, each in a few
seconds at most:

- the data: the real :func:`~mtl_core.data.prepare`, which is the complete check
  (columns, targets, splits, strays, non-finite values, the transforms);
- the device: ``cuda`` or ``cuda:N`` must exist on this machine;
- the names MLflow will validate: the experiment and the registered model;
- the servers: the MLflow tracking server, the Optuna storage (driver, host,
  credentials) and the Prefect API answer within a short timeout.

Nothing here creates a file, a database, a run or a study: SQLite paths are
checked for a folder that could hold them, and a database server is only
connected to.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mtl_core.config import ExperimentConfig, parse_override
from mtl_core.errors import ConfigError
from mtl_core.redact import has_credentials, redact_url

CONNECT_TIMEOUT = 3.0  # seconds per server; a dead one fails fast


def move_secret_storage(overrides: list[str]) -> list[str]:
    """``overrides`` less a credentialed ``search.storage``, which moves to ``MTL_OPTUNA_STORAGE``.

    Prefect stores a flow's parameters in clear text, so a storage URL with a
    password must not become one. The environment variable already takes
    precedence over ``search.storage`` (see
    :func:`mtl_core.integrations.search.resolve_storage`), so the run uses the
    same storage; one already set is kept, as it would have won anyway.
    """
    kept = []
    for item in overrides:
        keys, value = parse_override(item)
        if keys == ["search", "storage"] and isinstance(value, str) and has_credentials(value):
            os.environ.setdefault("MTL_OPTUNA_STORAGE", value)
        else:
            kept.append(item)
    return kept


def check_run(cfg: ExperimentConfig) -> None:
    """Everything ``mtl run`` can check before the flow starts; see the module docstring.

    Raises:
        MTLError: The first problem found, as one line naming the key, file,
            column or server and what was expected.
    """
    from mtl_core.data import prepare
    from mtl_core.integrations import tracking

    check_names(cfg)
    check_device(cfg.train.device)
    check_storage(cfg)
    prepare(cfg.data, cfg.features)
    check_tracking(tracking.tracking_uri())
    if api := os.environ.get("PREFECT_API_URL"):
        _check_http("PREFECT_API_URL", api.rstrip("/"), "/health")


def check_names(cfg: ExperimentConfig) -> None:
    """The experiment and registered model names, by MLflow's own rules."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    model_key = "tracking.model_name" if cfg.tracking.model_name else "tracking.experiment"
    checks = (
        ("tracking.experiment", cfg.tracking.experiment, "_validate_experiment_name", "experiment"),
        (model_key, cfg.tracking.registered_model, "_validate_model_name", "registered model"),
    )
    for key, name, rule, role in checks:
        validate = getattr(validation, rule, None)  # private to MLflow: skip the check if it moves
        if validate is None:
            continue
        try:
            validate(name)
        except MlflowException as exc:
            # The experiment's name doubles as the model's unless tracking.model_name is set.
            derived = role == "registered model" and key == "tracking.experiment"
            hint = "; set tracking.model_name to another name" if derived else ""
            raise ConfigError(
                f"key '{key}': MLflow refuses '{name[:80]}' as a {role} name "
                f"({exc.message.splitlines()[0]}){hint}"
            ) from None


def check_device(device: str) -> None:
    """``cuda`` and ``cuda:N`` must name a CUDA device this machine has."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        have = f"CUDA devices cuda:0..cuda:{count - 1}" if count else "no CUDA device"
        raise ConfigError(f"key 'train.device': '{device}' does not exist; this machine has {have}")


def writable_place(path: Path) -> str | None:
    """Why a file could not be created at ``path`` (creating nothing), or None when it could."""
    if path.is_dir():
        return "is a folder"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def check_storage(cfg: ExperimentConfig) -> None:
    """The Optuna storage: its form, its driver, and that its database answers."""
    from mtl_core.integrations import search

    env = os.environ.get("MTL_OPTUNA_STORAGE")
    key = "MTL_OPTUNA_STORAGE" if env else "search.storage"
    try:
        url = search.resolve_storage(cfg.search)
    except ConfigError as exc:
        raise ConfigError(redact_url(str(exc))) from None
    shown = f"{key} '{redact_url(url)}'"
    if url.startswith("journal:") or url.endswith(search.JOURNAL_SUFFIXES):
        if why := writable_place(Path(url.removeprefix("journal:"))):
            raise ConfigError(f"{shown}: cannot hold a journal file ({why})")
        return
    if "://" not in url:
        raise ConfigError(f"{shown}: expected a *.log journal file or a database URL")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{shown}: not a database URL (driver://user@host/database)") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and (why := writable_place(Path(parsed.database))):
            raise ConfigError(f"{shown}: cannot hold an SQLite file ({why})")
        return
    _check_database(shown, url, parsed)


def _check_database(shown: str, url: str, parsed) -> None:
    """Load the URL's driver and open one connection, with a short timeout."""
    import sqlalchemy
    from sqlalchemy.exc import NoSuchModuleError
    from sqlalchemy.pool import NullPool

    timeout_args = {"psycopg2": "connect_timeout", "pymysql": "connect_timeout"}
    try:
        driver = parsed.get_dialect().driver
        args = {timeout_args[driver]: int(CONNECT_TIMEOUT)} if driver in timeout_args else {}
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=args)
    except NoSuchModuleError:
        raise ConfigError(f"{shown}: unknown database driver '{parsed.drivername}'") from None
    except ImportError as exc:
        hint = "; write postgresql+psycopg2://" if parsed.get_backend_name() == "postgresql" else ""
        raise ConfigError(
            f"{shown}: the driver of '{parsed.drivername}' is not installed ({exc.name}){hint}"
        ) from None
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            with engine.connect():
                outcome.append(None)
        except Exception as exc:  # any driver's error: reported below as one line
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True)  # DNS may ignore the timeout
    worker.start()
    worker.join(CONNECT_TIMEOUT + 2)
    if not outcome:
        raise ConfigError(f"{shown}: no answer within {CONNECT_TIMEOUT + 2:.0f} s")
    if (exc := outcome[0]) is not None:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise ConfigError(f"{shown}: cannot connect ({redact_url(reason[0] if reason else '')})")


def check_tracking(uri: str) -> None:
    """The MLflow tracking store: a server that answers, or a folder that can hold SQLite."""
    if uri.startswith(("http://", "https://")):
        _check_http("MLFLOW_TRACKING_URI", uri.rstrip("/"), "/health")
    elif uri.startswith("sqlite:///") and (
        why := writable_place(Path(uri.removeprefix("sqlite:///")))
    ):
        raise ConfigError(f"MLflow store '{uri}': cannot hold an SQLite file ({why})")


def _check_http(key: str, base: str, path: str) -> None:
    import httpx

    shown = f"{key} {redact_url(base)}"
    try:
        resp = httpx.get(base + path, timeout=CONNECT_TIMEOUT)
    except httpx.HTTPError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{shown}: not reachable ({redact_url(reason)})") from None
    if resp.status_code >= 500:
        raise ConfigError(f"{shown}: answered HTTP {resp.status_code} on {path}")
