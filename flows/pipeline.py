"""The ``mtl-pipeline`` flow: prepare data, tune, train, evaluate, register.

Each task wraps one ``mtl_core`` call; the flow reads like a table of
contents. MLflow receives one parent run per flow run and one child run per
trial; the final model is registered and promoted to ``champion`` only when
it beats the current one on the test objective.

Runs of one experiment may overlap: trials are claimed and versions promoted
under locks (:mod:`flows.locks`). Each run first closes what dead processes
left of its experiment (MLflow runs, Optuna trials, unpromoted versions, Prefect
flow runs), and a stopped run (SIGTERM, Ctrl-C) marks its MLflow run KILLED and
stops its workers (:mod:`flows.shutdown`).

The search runs in worker processes of the run (``search.executor: local``) or
in trial-worker flow runs on the work pool (``pool``, :mod:`flows.pool`; the
worker flow is :mod:`flows.trial_worker`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner

import flows  # noqa: F401  (applies the embedded defaults before Prefect reads settings)
from flows import debris, pool, shutdown
from flows.locks import Locks
from flows.params import PipelineParams
from mtl_core.baselines import BaselineResult, single_task_baselines
from mtl_core.card import card_facts, model_card
from mtl_core.config import (
    DataConfig,
    ExperimentConfig,
    FeaturesConfig,
    flat_params,
    load_config,
    resolve_config_path,
)
from mtl_core.data import PreparedData, prepare
from mtl_core.errors import MTLError
from mtl_core.integrations import figures, search, tracking
from mtl_core.integrations.serving import model_package
from mtl_core.metrics import delta_m, evaluate
from mtl_core.model import MultiTaskModel
from mtl_core.redact import redact_url
from mtl_core.train import FitResult, train_from_config

PROJECT_DIR = Path(__file__).resolve().parent.parent
# The pipeline prints its own progress line per trial, with the reason of a failed one;
# Optuna's lines would repeat it.
optuna.logging.set_verbosity(optuna.logging.ERROR)
SERVER_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 10]}


@dataclass
class ParentRun:
    """The flow run's MLflow parent run."""

    experiment_id: str
    run_id: str
    url: str


@dataclass
class FinalModel:
    """The model retrained with the best trial's params."""

    net: MultiTaskModel
    fit: FitResult
    cfg: ExperimentConfig


# --------------------------------------------------------------------------- tasks


@task(name="load-config", cache_policy=NO_CACHE)
def load_experiment(params: PipelineParams) -> tuple[ExperimentConfig, str]:
    """Resolve and validate the config with the run's overrides."""
    path = resolve_config_path(params.config)
    cfg = load_config(path, params.config_overrides())
    pool.check_pool_mode(cfg)  # before any run or study exists
    if params.new_study:  # a study per run: a schedule's next run must not find it full
        study = f"{search.study_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        cfg = load_config(path, [*params.config_overrides(), f"search.study_name={study}"])
    return cfg, str(path)


def _data_cache_key(context, parameters: dict[str, Any]) -> str:
    """Cache prepared data on the data and features configs and the file's content."""
    cfg: DataConfig = parameters["data_cfg"]
    features: FeaturesConfig = parameters["features"]
    h = hashlib.sha256(cfg.model_dump_json().encode())
    h.update(features.model_dump_json().encode())
    if cfg.source == "file" and cfg.path and Path(cfg.path).is_file():
        with open(cfg.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return f"prepare-data-{h.hexdigest()[:32]}"


@task(
    name="prepare-data",
    cache_key_fn=_data_cache_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
)
def prepare_data(data_cfg: DataConfig, features: FeaturesConfig) -> PreparedData:
    """Load, validate, split and preprocess (cached on the configs and the file's content)."""
    return prepare(data_cfg, features)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _run_url(uri: str, experiment_id: str, run_id: str) -> str:
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


@task(name="close-debris", cache_policy=NO_CACHE, **SERVER_RETRIES)
def close_debris(cfg: ExperimentConfig) -> dict[str, int]:
    """Close what dead processes left of this experiment; prints how much there was.

    MLflow runs left RUNNING become FAILED with a reason, versions registered but
    never promoted are tagged ``orphaned``, trials left RUNNING fail with a reason
    (and stop counting toward ``n_trials``), and flow runs left RUNNING are CRASHED.
    Only what belonged to a process that is dead on this host is touched.
    """
    client = tracking.get_client()
    runs = tracking.close_dead_runs(client, cfg.tracking.experiment)
    versions = tracking.mark_orphan_versions(client, cfg.tracking.registered_model)
    study = search.open_study(cfg, search.resolve_storage(cfg.search))
    found = {
        "parent run": sum(tracking.PARENT_TAG not in r.data.tags for r in runs),
        "trial run": sum(tracking.PARENT_TAG in r.data.tags for r in runs),
        "trial": len(search.close_stale_trials(study)),
        "model version": len(versions),
        "flow run": debris.crash_dead_flow_runs("mtl-pipeline")
        + debris.crash_dead_flow_runs(pool.WORKER_FLOW),
    }
    if any(found.values()):
        print(
            "closed what dead processes left: "
            + ", ".join(f"{n} {what}{'s' * (n != 1)}" for what, n in found.items() if n)
        )
    return found


@task(name="start-parent-run", cache_policy=NO_CACHE, **SERVER_RETRIES)
def start_parent_run(cfg: ExperimentConfig, data: PreparedData, config_file: str) -> ParentRun:
    """Open the MLflow parent run: tags, flattened config, dataset input."""
    client = tracking.get_client()
    exp_id = tracking.ensure_experiment(client, cfg.tracking.experiment)
    started = time.strftime("%Y-%m-%d %H:%M")
    tags = {
        "config.file": config_file,
        "dataset.fingerprint": data.fingerprint,
        "dataset.source": data.source,
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
    }
    if os.environ.get("PREFECT_API_URL") and flow_run.ui_url:
        tags["prefect.flow_run_url"] = flow_run.ui_url
    if commit := _git_commit():
        tags["mlflow.source.git.commit"] = commit
    run_name = f"{cfg.tracking.experiment} | {Path(config_file).stem} | {started}"
    run_id = tracking.start_run(client, exp_id, run_name, tags)
    tracking.log_params(client, run_id, flat_params(cfg))
    train_rows = data.splits["train"].rows
    tracking.log_dataset(
        client,
        run_id,
        train_rows,
        name=Path(data.source).name,
        source=data.source,
        digest=data.fingerprint,
    )
    return ParentRun(exp_id, run_id, _run_url(client.tracking_uri, exp_id, run_id))


def lock_key(cfg: ExperimentConfig, storage_url: str) -> str:
    """The study's claim-lock key: its name and a hash of its storage (no password in it)."""
    return f"{search.study_name(cfg)}-{hashlib.sha256(storage_url.encode()).hexdigest()[:12]}"


@task(name="search-worker", cache_policy=NO_CACHE)
def search_worker(
    cfg: ExperimentConfig,
    data: PreparedData,
    storage_url: str,
    n_trials: int,
    parent: ParentRun,
    locks: Locks,
    torch_threads: int | None = None,
    claim_key: str | None = None,
    labels: dict[str, str] | None = None,
    until_full: bool = False,
    stop_when: Callable[[], bool] | None = None,
) -> int:
    """Run this worker's share of trials; each trial is a child run of ``parent``.

    Trials are claimed under the study's lock, so that ``n_trials`` holds across
    every process searching the study. A trial worker of a work pool passes the
    run's ``claim_key`` (its storage URL may be spelled differently on its host),
    ``labels`` that name its flow run on each trial and trial run, ``until_full``
    (see ``search.run_worker``), and ``stop_when`` its pipeline run has ended.
    """
    client = tracking.get_client()
    base = {k: v for k, v in flat_params(cfg).items() if not k.startswith("tasks.")}

    unreachable: list[str] = []  # set when the tracking server stops answering

    def trial_logger(number: int, params: dict[str, Any]) -> tracking.MlflowTrialLogger:
        try:
            return tracking.MlflowTrialLogger(
                client,
                parent.experiment_id,
                parent.run_id,
                number,
                params,
                base_params=base,
                tags=labels,
            )
        except Exception as exc:
            unreachable.append(f"{type(exc).__name__}: {exc}")
            raise

    total = cfg.search.n_trials

    def progress(study, trial) -> None:
        done = search.finished_trials(study)
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:
            best = "none yet"
        reason = trial.user_attrs.get("fail_reason")
        print(
            f"trial {trial.number} {trial.state.name.lower()}: {done}/{total} done, best {best}"
            + (f" ({reason})" if reason else "")
        )
        if log_error := trial.user_attrs.get("log_error"):
            unreachable.append(log_error)
            print(f"trial {trial.number} could not be recorded in MLflow ({log_error})")

    key = claim_key or lock_key(cfg, storage_url)
    timeout = cfg.search.timeout_minutes * 60 if cfg.search.timeout_minutes else None
    ran = search.run_worker(
        cfg,
        data,
        storage_url,
        n_trials,
        timeout,
        cfg.train.device,
        trial_logger,
        progress,
        torch_threads,
        claim=lambda: locks.hold("trials", key),
        # Trials that cannot be recorded are wasted: stop instead of failing them one by one.
        should_stop=lambda: bool(unreachable) or bool(stop_when and stop_when()),
        until_full=until_full,
        labels=labels,
    )
    if unreachable:
        raise MTLError(f"search stopped: the tracking server did not answer ({unreachable[0]})")
    return ran


@task(name="train-final", cache_policy=NO_CACHE)
def train_final(cfg: ExperimentConfig, data: PreparedData) -> FinalModel:
    """Retrain on the train split with the best params, early-stopping on val."""
    net, result = train_from_config(cfg, data)
    return FinalModel(net.cpu(), result, cfg)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_final(final: FinalModel, data: PreparedData) -> dict[str, float]:
    """Validation and test metrics of the final model."""
    return evaluate(final.net, data, ("val", "test"), device=final.cfg.train.device)


@task(name="single-task-baselines", cache_policy=NO_CACHE)
def run_baselines(cfg: ExperimentConfig, data: PreparedData) -> BaselineResult:
    """One model per task, same representation, architecture and budget as the final model."""
    return single_task_baselines(cfg, data)


@task(name="log-results", cache_policy=NO_CACHE, **SERVER_RETRIES)
def log_results(
    parent: ParentRun,
    final: FinalModel,
    data: PreparedData,
    metrics: dict[str, float],
    baselines: BaselineResult | None,
    study: optuna.Study,
    best_number: int,
) -> dict[str, float]:
    """Final and baseline metrics, best params and figures on the parent run."""
    client = tracking.get_client()
    out = dict(metrics)
    if baselines is not None:
        out.update({f"baseline/{k}": v for k, v in baselines.metrics.items()})
        out["test/delta_m"] = delta_m(metrics, baselines.metrics, data.tasks, "test")
        out["val/delta_m"] = delta_m(metrics, baselines.metrics, data.tasks, "val")
    out["final/best_epoch"] = final.fit.best_epoch
    tracking.log_metrics(client, parent.run_id, out)
    best = {
        f"best.{k}": v
        for k, v in flat_params(final.cfg).items()
        if k.startswith(("tasks.", "loss.", "train.lr", "train.batch_size", "model.", "features."))
    }
    tracking.log_params(client, parent.run_id, {**best, "best.trial": best_number})
    figs = {
        "figures/optimization_history.png": figures.optimization_history(study),
        "figures/param_importances.png": figures.param_importances(study),
    }
    if baselines is not None:
        figs["figures/test_metrics_vs_baselines.png"] = figures.mtl_vs_baselines(
            data.tasks, metrics, baselines.metrics
        )
    for name, fig in figs.items():
        if fig is not None:
            client.log_figure(parent.run_id, fig, name)
            figures.close(fig)
    return out


@task(name="register-model", cache_policy=NO_CACHE, **SERVER_RETRIES)
def register_model(
    parent: ParentRun,
    final: FinalModel,
    data: PreparedData,
    test_objective: float,
    metrics: dict[str, float] | None = None,
    best_number: int | None = None,
    locks: Locks | None = None,
) -> tracking.Promotion:
    """Log the model (with its card and drift profile), register it, promote it if better.

    The promotion holds the model's lock: two runs finishing together must not both
    read the old champion and both move the alias.
    """
    client = tracking.get_client()
    name = final.cfg.tracking.registered_model
    facts = card_facts(final.cfg, data, metrics or {}, parent.run_id, parent.url, best_number)
    with model_package(final.net, final.cfg, data) as model:
        version = tracking.log_model_version(
            client,
            parent.run_id,
            model,
            name,
            tags={
                tracking.SCORE_TAG: repr(test_objective),
                "dataset.fingerprint": data.fingerprint,
            },
            card=model_card(facts),
            metrics={k: v for k, v in (metrics or {}).items() if k.startswith(("test/", "val/"))},
            params=facts.best_params,
        )
    with locks.hold("promote", name) if locks else contextlib.nullcontext():
        decision = tracking.promote(client, name, version, test_objective)
    tracking.set_tags(
        client,
        parent.run_id,
        {
            "promotion.decision": decision.alias,
            "promotion.summary": decision.describe(),
            "model.uri": f"models:/{name}/{version}",
        },
    )
    tracking.log_metrics(
        client,
        parent.run_id,
        {
            "promotion/new_test_objective": decision.new_score,
            **(
                {"promotion/champion_test_objective": decision.champion_score}
                if decision.champion_score is not None
                else {}
            ),
        },
    )
    return decision


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(
    parent: ParentRun,
    cfg: ExperimentConfig,
    metrics: dict[str, float],
    best_number: int,
    best_value: float,
    decision: tracking.Promotion,
    top: list[dict[str, Any]],
) -> None:
    """Prefect artifacts: a markdown summary, the top-trials table, a link to MLflow."""
    tasks = cfg.task_names
    rows = []
    for t in tasks:
        keys = sorted(k for k in metrics if k.startswith(f"test/{t}/"))
        for k in keys:
            base = metrics.get(f"baseline/{k}")
            rows.append(
                f"| {t} | {k.split('/')[-1]} | {metrics[k]:.4f} | "
                f"{'' if base is None else f'{base:.4f}'} |"
            )
    dm = metrics.get("test/delta_m")
    md = "\n".join(
        [
            f"# {cfg.tracking.experiment}: multi-task pipeline summary",
            f"- best trial: **#{best_number}**, val objective {best_value:.4f}",
            f"- test objective: {metrics['test/objective']:.4f}",
            "- delta_m vs single-task baselines: "
            + (
                f"**{dm:+.2f}%** ({'sharing helped' if dm > 0 else 'sharing did not help'})"
                if dm is not None
                else "baselines off"
            ),
            f"- promotion: {decision.describe()}",
            f"- MLflow parent run: [{parent.run_id}]({parent.url})",
            "",
            "| task | metric | multi-task (test) | single-task (test) |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    create_markdown_artifact(markdown=md, key="mtl-summary", description="Pipeline summary")
    create_table_artifact(table=top, key="mtl-top-trials", description="Best trials")
    create_link_artifact(link=parent.url, link_text="MLflow parent run", key="mlflow-run")


# What stopping a run raises: Ctrl-C, SIGTERM during a flow run, and SIGTERM around it.
STOPPED = (KeyboardInterrupt, TerminationSignal, shutdown.Terminated)


# One retry only: when the tracking server is what failed, the run should end promptly.
@task(name="mark-parent-failed", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def mark_failed(parent: ParentRun, error: BaseException) -> None:
    """Mark the parent run FAILED, or KILLED when the run was stopped, with the error as a tag."""
    client = tracking.get_client()
    stopped = isinstance(error, STOPPED)
    message = search.interruption(error) if stopped else f"{type(error).__name__}: {error}"
    tracking.set_tags(client, parent.run_id, {"error": message})
    tracking.end_run(client, parent.run_id, "KILLED" if stopped else "FAILED")


# --------------------------------------------------------------------------- the flow


def merge_with_deployment(params: PipelineParams) -> PipelineParams:
    """A deployment's run: the deployment's ``params`` with the fields the run sent.

    Prefect merges a run's parameters into the deployment's one top-level key at a
    time, so a REST call sending ``{"params": {"n_trials": 5}}`` would run with every
    other field at its default (the config ``default``, not the deployment's). The
    fields the caller sent are the keys of the run's stored ``params``; the others
    come from the deployment. A run that sent the whole object (the dashboard, a
    schedule) is unchanged.
    """
    ctx = get_run_context()
    run = ctx.flow_run  # as the API stored it: the raw parameters
    if run is None or run.deployment_id is None:
        return params
    sent = (run.parameters or {}).get("params")
    if not isinstance(sent, dict) or set(sent) >= set(PipelineParams.model_fields):
        return params
    base = (ctx.client.read_deployment(run.deployment_id).parameters or {}).get("params")
    merged = PipelineParams.merged(base or {}, sent)
    print(
        "parameters: the deployment's, with "
        + (", ".join(f"{k}={sent[k]!r}" for k in sorted(sent)) or "nothing")
        + " from this run"
    )
    return merged


def tune(
    cfg: ExperimentConfig, data: PreparedData, parent: ParentRun, locks: Locks, config_file: str
) -> optuna.Study:
    """Run the search until the study holds ``n_trials`` finished trials; returns the study.

    The workers are processes of this run, or trial-worker flow runs on the work pool
    (``search.executor: pool``, :func:`flows.pool.run_on_pool`).
    """
    fingerprint = data.fingerprint
    storage_url = search.resolve_storage(cfg.search)
    study = search.open_study(cfg, storage_url)  # created once, before any worker starts
    remaining = max(0, cfg.search.n_trials - search.finished_trials(study))
    shares = [n for n in search.split_trials(remaining, cfg.search.n_workers) if n > 0]
    logger = get_run_logger()
    batches = f", {cfg.search.population} at a time" if cfg.search.population > 1 else ""
    if cfg.search.cv_folds > 1:
        batches += f", each on {cfg.search.cv_folds} folds"
    where = " on the work pool" if cfg.search.executor == "pool" else ""
    logger.info(
        f"study '{study.study_name}' at {redact_url(storage_url)}: {remaining} trial(s) to "
        f"run on {len(shares)} worker(s){where}{batches}"
    )
    if cfg.search.executor == "pool" and shares:
        run = pool.PoolSearch(
            cfg,
            storage_url,
            parent.experiment_id,
            parent.run_id,
            fingerprint,
            lock_key(cfg, storage_url),
            config_file,
        )
        pool.run_on_pool(run, logger.info)
    elif len(shares) == 1:
        search_worker(cfg, data, storage_url, shares[0], parent, locks)
    elif shares:
        threads = max(1, (os.cpu_count() or 1) // len(shares))
        # Worker processes report to this flow's API (also the ephemeral one) and stop
        # cleanly on SIGTERM or when this process dies (see flows.shutdown).
        api_url = str(get_run_context().client.api_url)
        runner = ProcessPoolTaskRunner(
            max_workers=len(shares), initializer=shutdown.init_pool_worker, initargs=(api_url,)
        )
        with runner:
            futures = [
                runner.submit(
                    search_worker,
                    parameters={
                        "cfg": cfg,
                        "data": data,
                        "storage_url": storage_url,
                        "n_trials": n,
                        "parent": parent,
                        "locks": locks,
                        "torch_threads": threads,
                    },
                )
                for n in shares
            ]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                # Leaving the runner waits for running tasks: stop the workers first, so that
                # a stopped run does not search on (they close their running trials).
                shutdown.stop_pool_workers()
                raise
    return search.open_study(cfg, storage_url)


@flow(name="mtl-pipeline", log_prints=True)
def mtl_pipeline(params: PipelineParams = PipelineParams()) -> dict[str, Any]:  # noqa: B008
    """Tune task weights and L1/L2 by search, train, evaluate against baselines, register.

    Args:
        params: The config to run and what this run changes in it (search size,
            workers, epochs, seed, device, overrides); empty fields keep the config's.
    """
    debris.label_flow_run()  # first: a later run can then tell whether this process died
    params = merge_with_deployment(params)
    locks = Locks.for_this_run()
    cfg, config_file = load_experiment(params)
    close_debris(cfg)
    data = prepare_data(cfg.data, cfg.features)
    parent = start_parent_run(cfg, data, config_file)
    try:
        study = tune(cfg, data, parent, locks, config_file)
        best = search.best_trial(study)
        best_cfg = search.apply_params(cfg, best.user_attrs["params"])
        best_data = data.with_features(best_cfg.features)  # the best trial's representation
        final = train_final(best_cfg, best_data)
        metrics = evaluate_final(final, best_data)
        baselines = run_baselines(best_cfg, best_data) if cfg.baselines else None
        metrics = log_results(parent, final, best_data, metrics, baselines, study, best.number)
        decision = register_model(
            parent, final, best_data, metrics["test/objective"], metrics, best.number, locks
        )
        publish_artifacts(
            parent, cfg, metrics, best.number, best.value, decision, search.top_trials(study)
        )
    except BaseException as exc:
        try:
            mark_failed(parent, exc)
        except Exception as mark_exc:  # the tracking server may be the thing that failed
            get_run_logger().error(f"could not mark MLflow run {parent.run_id} failed: {mark_exc}")
        raise
    tracking.end_run(tracking.get_client(), parent.run_id, "FINISHED")
    name = cfg.tracking.registered_model
    return {
        "parent_run_id": parent.run_id,
        "run_url": parent.url,
        "model_name": name,
        "model_version": decision.version,
        "alias": decision.alias,
        "promotion": decision.describe(),
        "best_trial": best.number,
        "test_objective": metrics["test/objective"],
        "delta_m": metrics.get("test/delta_m"),
        "champion_uri": f"models:/{name}@champion",
    }
