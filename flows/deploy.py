"""``mtl deploy``: the ``mtl-pipeline`` flow as a scheduled deployment on a process work pool.

The deployment runs the flow from this checkout: ``flow.from_source`` on the
repository root records a ``set_working_directory`` pull step, so a process
worker changes into the repository and imports ``flows/pipeline.py``; no image,
no registry. The deployment carries

- defaults for a run started by hand (the dashboard's Run button): the config
  with its own search size;
- a nightly schedule running a small search and a weekly one running a larger
  search on two workers, each with its own parameters and a fresh Optuna study
  (``new_study``), so that every scheduled run searches instead of resuming a
  study that is already full.

Prefect merges a schedule's or a run's parameters into the deployment's one
top-level key at a time, so each schedule carries the whole ``params`` object, and
the flow merges a run's partial ``params`` into the deployment's field by field
(``flows.pipeline.merge_with_deployment``). The server checks every run's
parameters against the flow's schema (``enforce_parameter_schema``) and refuses a
bad value, naming the field, before a worker picks the run up; the schema also
refuses unknown top-level keys (``additionalProperties: false``, which Prefect's
generated schema lacks), so ``{"parms": ...}`` is refused instead of failing at start.

Next to the pipeline's, :func:`deploy` creates the trial-worker deployment
``mtl-trial-worker/<name>`` on the same pool, which pool-mode runs
(``search.executor: pool``) start their search workers from (:mod:`flows.pool`).

:func:`deploy_scoring` deploys the ``mtl-score`` flow the same way, under the same name
and on the same pool, with a daily schedule of its own and the typed scoring form.
"""

from __future__ import annotations

import os
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from flows.params import PipelineParams, ScoreParams, params_error
from mtl_core.config import CONFIG_DIR, bundled_config, config_names, load_config, state_dir
from mtl_core.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent
ENTRYPOINT = "flows/pipeline.py:mtl_pipeline"
FLOW_NAME = "mtl-pipeline"
DEFAULT_POOL = "mtl-process"


@dataclass(frozen=True)
class SchedulePlan:
    """A cron schedule and the parameters its runs change from the deployment's defaults."""

    slug: str
    cron: str
    changes: dict[str, Any] = field(default_factory=dict)


NIGHTLY = SchedulePlan("nightly", "0 2 * * *", {"n_trials": 20, "new_study": True})
WEEKLY = SchedulePlan("weekly", "0 4 * * 6", {"n_trials": 100, "n_workers": 2, "new_study": True})
# Scoring runs after the nightly training, so each day's batch meets that day's champion.
SCORING = SchedulePlan("daily", "0 6 * * *")
SCORE_ENTRYPOINT = "flows/score.py:mtl_score"
SCORE_FLOW_NAME = "mtl-score"
WORKER_ENTRYPOINT = "flows/trial_worker.py:mtl_trial_worker"
WORKER_FLOW_NAME = "mtl-trial-worker"  # flows.pool.WORKER_FLOW (not imported: it pulls in Prefect)


@dataclass
class Deployed:
    """What :func:`deploy` created or updated."""

    id: UUID
    name: str
    work_pool: str
    parameters: dict[str, Any]
    schedules: dict[str, tuple[str, dict[str, Any]]]  # slug -> (cron, params)
    url: str | None
    worker: str | None = None  # the trial-worker deployment made next to it


def _params(base: dict[str, Any], changes: dict[str, Any], what: str) -> dict[str, Any]:
    """Validated ``params`` object: ``base`` with ``changes`` applied."""
    try:
        return PipelineParams(**{**base, **changes}).model_dump(mode="json")
    except ValidationError as exc:
        raise params_error(exc, what) from None


def _bundled_name(config: str) -> str:
    """The bundled config a deployment runs: a name, or a path to a file in ``configs/``.

    The dashboard offers only the configs in ``configs/`` (see :mod:`flows.params`),
    and a worker has only the files of the checkout it runs from.
    """
    path = Path(config)
    if bundled_config(config) is None and path.is_file():
        if path.resolve().parent == CONFIG_DIR.resolve() and bundled_config(path.name):
            return path.stem
        raise ConfigError(
            f"config '{config}': a deployment runs a config of configs/ {config_names()}; "
            "add the file there (and commit it, so that workers have it)"
        )
    return config.removesuffix(".yaml")


def _check_server(api_url: str, work_pool: str) -> None:
    """Fail with one clear line when the API is unreachable or the pool is missing."""
    import httpx

    try:
        resp = httpx.get(f"{api_url}/work_pools/{work_pool}", timeout=10)
    except httpx.HTTPError as exc:
        raise ConfigError(f"PREFECT_API_URL {api_url}: not reachable ({exc})") from None
    if resp.status_code == 404:
        raise ConfigError(
            f"work pool '{work_pool}' not found at {api_url}; start the stack with "
            f"infra/local/up or create it: prefect work-pool create {work_pool} --type process"
        )
    if resp.status_code >= 400:
        raise ConfigError(f"PREFECT_API_URL {api_url}: GET work pool answered {resp.status_code}")


def refuse_unknown_parameters(deployment_id: UUID) -> None:
    """Make the server refuse a run whose parameters have a key the flow does not take.

    Prefect's generated schema lists the flow's parameters but lets others through,
    and such a run fails only when it starts. With ``additionalProperties: false``
    the server's own check (``enforce_parameter_schema``) refuses it with HTTP 409,
    naming the key, before a run exists.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        schema = dict(client.read_deployment(deployment_id).parameter_openapi_schema or {})
        if schema.get("additionalProperties") is not False:
            schema["additionalProperties"] = False
            client.update_deployment(
                deployment_id, DeploymentUpdate(parameter_openapi_schema=schema)
            )


def deploy(
    config: str = "default",
    *,
    name: str | None = None,
    work_pool: str | None = None,
    overrides: list[str] | None = None,
    schedules: tuple[SchedulePlan, ...] = (NIGHTLY, WEEKLY),
    timezone: str = "UTC",
    paused: bool = False,
    concurrency_limit: int | None = 1,
) -> Deployed:
    """Create or update the ``mtl-pipeline`` deployment on a process work pool.

    Args:
        config: Config name in ``configs/``, or the path of a file there.
        name: Deployment name; default the config's file stem.
        work_pool: Process work pool; default ``MTL_WORK_POOL``, else ``mtl-process``.
        overrides: ``key=value`` config overrides for every run of the deployment.
        schedules: Cron schedules with their parameter changes.
        timezone: IANA time zone of the cron strings.
        paused: Create the deployment with its schedules paused.
        concurrency_limit: Runs of this deployment at once (``None``: no limit); 1 keeps
            two runs from promoting versions of one registered model at the same time.

    Returns:
        The deployment's id, name, parameters and schedules.

    Raises:
        ConfigError: No Prefect server is configured or reachable, the pool does not
            exist, or the config or a schedule's parameters are invalid.
    """
    api_url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api_url:
        raise ConfigError(
            "PREFECT_API_URL is not set: a deployment needs a Prefect server "
            "(infra/local/up, then source the env.sh it writes)"
        )
    pool = work_pool or os.environ.get("MTL_WORK_POOL") or DEFAULT_POOL
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"time zone '{timezone}': expected an IANA name, e.g. UTC") from None
    config_ref = _bundled_name(config)
    base = _params({"config": config_ref, "overrides": list(overrides or [])}, {}, "deployment")
    load_config(config_ref, PipelineParams(**base).config_overrides())  # fail here, not at 2 a.m.
    plans = {
        plan.slug: (plan.cron, _params(base, plan.changes, f"schedule '{plan.slug}'"))
        for plan in schedules
    }
    _check_server(api_url, pool)

    from prefect import flow
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_UI_URL

    crons = []
    for slug, (cron, params) in plans.items():
        try:
            crons.append(Cron(cron, timezone=timezone, slug=slug, parameters={"params": params}))
        except ValueError as exc:  # a bad cron string or time zone
            raise ConfigError(f"schedule '{slug}': {exc}") from None
    pipeline = flow.from_source(source=str(PROJECT_DIR), entrypoint=ENTRYPOINT)
    dep_name = name or Path(config_ref).stem
    dep_id = pipeline.deploy(
        name=dep_name,
        work_pool_name=pool,
        parameters={"params": base},
        schedules=crons,
        description=(
            "Tune task weights and L1/L2 by search, train, evaluate against single-task "
            "baselines, register the model and promote it to 'champion' when it is better."
        ),
        tags=["mtl"],
        enforce_parameter_schema=True,
        paused=paused,
        concurrency_limit=concurrency_limit,
        ignore_warnings=True,  # a process pool without an image is what we want
        print_next_steps=False,
    )
    refuse_unknown_parameters(dep_id)
    # Pool-mode runs of this deployment start their search workers from this one; it has
    # no schedule and no limit of its own (the pool's limit caps the workers).
    worker = flow.from_source(source=str(PROJECT_DIR), entrypoint=WORKER_ENTRYPOINT)
    worker_id = worker.deploy(
        name=dep_name,
        work_pool_name=pool,
        description=(
            f"A search worker of a pool-mode run of {FLOW_NAME}/{dep_name} "
            "(search.executor: pool); started by the run itself, not by hand."
        ),
        tags=["mtl", "trial-worker"],
        enforce_parameter_schema=True,
        ignore_warnings=True,
        print_next_steps=False,
    )
    refuse_unknown_parameters(worker_id)
    ui = PREFECT_UI_URL.value()
    return Deployed(
        id=dep_id,
        name=f"{FLOW_NAME}/{dep_name}",
        work_pool=pool,
        parameters=base,
        schedules=plans,
        url=f"{ui}/deployments/deployment/{dep_id}" if ui else None,
        worker=f"{WORKER_FLOW_NAME}/{dep_name}",
    )


def deploy_scoring(
    config: str = "default",
    *,
    name: str | None = None,
    work_pool: str | None = None,
    input: str | None = None,
    output: str | None = None,
    model_uri: str | None = None,
    cron: str = SCORING.cron,
    timezone: str = "UTC",
    paused: bool = False,
    concurrency_limit: int | None = 1,
) -> Deployed:
    """Create or update the ``mtl-score`` deployment, next to the training one, on the same pool.

    Its typed parameters are the :class:`~flows.params.ScoreParams` form; its daily schedule
    scores ``input`` with the champion of the config's registered model. Without an
    ``input`` the schedule is created inactive, pointing at ``<state>/inbox``, and runs start
    only by hand (with an input) until it is given one.

    Args:
        config: Config whose registered model is scored (``models:/<name>@champion``).
        name: Deployment name; default the config's file stem.
        work_pool: Process work pool; default ``MTL_WORK_POOL``, else ``mtl-process``.
        input: File, folder or glob to score on schedule (stored absolute).
        output: Parquet file to write (placeholders ``{date}``, ``{time}``, ``{version}``);
            default ``<state>/scores/{date}-v{version}.parquet``.
        model_uri: Model to score with; default the config's champion.
        cron: When the schedule runs.
        timezone: IANA time zone of ``cron``.
        paused: Create the deployment paused.
        concurrency_limit: Runs of this deployment at once (``None``: no limit).

    Returns:
        The deployment's id, name, parameters and schedule.

    Raises:
        ConfigError: No Prefect server is configured or reachable, the pool does not exist,
            or the config or parameters are invalid.
    """
    api_url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api_url:
        raise ConfigError(
            "PREFECT_API_URL is not set: a deployment needs a Prefect server "
            "(infra/local/up, then source the env.sh it writes)"
        )
    pool = work_pool or os.environ.get("MTL_WORK_POOL") or DEFAULT_POOL
    path = Path(config)
    config_ref = str(path.resolve()) if path.is_file() else config
    cfg = load_config(config_ref)
    fields = {
        "input": _absolute(input) if input else str(state_dir() / "inbox"),
        "output": _absolute(output or str(state_dir() / "scores" / "{date}-v{version}.parquet")),
        "model_uri": model_uri or f"models:/{cfg.tracking.registered_model}@champion",
    }
    try:
        params = ScoreParams(**fields).model_dump(mode="json")
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"scoring deployment: parameter '{where}': {err['msg']}") from None
    _check_server(api_url, pool)

    from prefect import flow
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_UI_URL

    try:
        schedule = Cron(
            cron,
            timezone=timezone,
            slug=SCORING.slug,
            active=input is not None,
            parameters={"params": params},
        )
    except ValueError as exc:
        raise ConfigError(f"scoring schedule: {exc}") from None
    scorer = flow.from_source(source=str(PROJECT_DIR), entrypoint=SCORE_ENTRYPOINT)
    dep_name = name or Path(config_ref).stem
    dep_id = scorer.deploy(
        name=dep_name,
        work_pool_name=pool,
        parameters={"params": params},
        schedules=[schedule],
        description=(
            "Score a batch with the champion (its alias resolved once, at the start), check "
            "it for drift against the training inputs, and write Parquet predictions."
        ),
        tags=["mtl", "scoring"],
        enforce_parameter_schema=True,
        paused=paused,
        concurrency_limit=concurrency_limit,
        ignore_warnings=True,
        print_next_steps=False,
    )
    refuse_unknown_parameters(dep_id)
    ui = PREFECT_UI_URL.value()
    return Deployed(
        id=dep_id,
        name=f"{SCORE_FLOW_NAME}/{dep_name}",
        work_pool=pool,
        parameters=params,
        schedules={SCORING.slug: (cron, params)},
        url=f"{ui}/deployments/deployment/{dep_id}" if ui else None,
    )


def _absolute(path: str) -> str:
    """A path (or glob) made absolute: the worker runs flows from the repository root."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path.cwd() / p)
