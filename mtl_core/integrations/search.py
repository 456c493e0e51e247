"""Optuna search over task weights, penalties, learning rate, and the config's open choices.

The open choices (``search.arch``, ``search.weighting``, ``search.numeric_embedding``,
``search.width``, ...) make architecture, representation, capacity and weighting
method part of the search, with conditional parameters: an expert count only
for architectures with experts, static task weights only for the ``static``
weighting.

The only module of the library that imports Optuna. Trials report each
epoch's validation objective to a median pruner through ``fit``'s callbacks.
A trial that diverges or raises is recorded as failed with its reason and the
study goes on. Studies live in persistent storage and are opened with
load-if-exists, so running the same experiment again resumes it.

Several processes may search one stored study at once (workers of one run,
or two runs of one experiment). ``n_trials`` holds across them: a worker
claims its next trial only while the study holds fewer finished or running
trials than that, under a lock the caller provides. Each trial records its
owner (host, pid, start time), so a trial whose process died is found and
closed as failed, with the reason, and does not count toward ``n_trials``.
A worker asked to run ``until_full`` (the trial workers of a work pool) waits
while other processes' trials fill the study, and takes over the trials of
those that died, so the study still ends with exactly ``n_trials``.

Logging is injected: ``run_worker`` takes a factory of :class:`TrialLogger`,
which the pipeline implements with MLflow, so this module stays server-free.

With ``search.population: K`` (K > 1) or ``search.cv_folds: k`` (k > 1) the
search runs in batches through Optuna's ask-and-tell interface instead of
``Study.optimize``: it asks ``min(K, remaining)`` trials, trains their models
together with :func:`mtl_core.population.train_population` (a trial with k folds
is k members), reports each trial's per-epoch value to its trial and prunes it
there, and tells each trial its outcome. TPE's ``constant_liar`` keeps the trials
of a batch apart. By default (``search.population_choices: shared``) the trials of
a batch take the open choices of its first trial and differ in the ranges, so
that they share one shape and train as one batched model. A trial's value under
cross-validation is the mean over its folds of the best validation objective.
Batches claim their trials, record their owner and close stale trials exactly as
single trials do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sqlite3
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
import sqlalchemy
import torch
from filelock import FileLock

from mtl_core.config import ExperimentConfig, SearchConfig, state_dir
from mtl_core.data import PreparedData
from mtl_core.errors import ConfigError, MTLError, SearchError
from mtl_core.metrics import evaluate
from mtl_core.owner import Owner
from mtl_core.population import EpochEvent, Member, MemberResult, train_population
from mtl_core.redact import redact_url
from mtl_core.train import EpochLog, train_from_config

TrialState = optuna.trial.TrialState
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# User attrs of a trial: who runs it, why it failed, and (for a trial whose process was
# stopped or died) why it has no outcome, which keeps it from counting toward n_trials.
OWNER_ATTR = "owner"
REASON_ATTR = "fail_reason"
INTERRUPTED_ATTR = "interrupted"
# A worker records a trial's owner within milliseconds of creating it; a RUNNING trial without
# one for this long lost its process before that (or was started by code that records none).
OWNERLESS_AFTER = timedelta(minutes=2)
HEARTBEAT_S, GRACE_S = 30, 120
# SQLite serialises writers; two runs sharing an SQLite study wait for each other this long
# instead of failing with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 60
# The connection pool of a database server (PostgreSQL, MySQL): one connection for the search
# and one more for the trial's heartbeat thread, so a worker holds at most two, and a
# connection the server dropped (a restart) is replaced before use instead of failing a trial.
SERVER_POOL = {"pool_size": 1, "max_overflow": 1, "pool_pre_ping": True}
# How often a worker that runs until the study is full looks again while others' trials run.
POLL_S = 2.0


class TrialLogger(Protocol):
    """Receives one trial's life: its params, every epoch, and how it ended."""

    def log_epoch(self, log: EpochLog) -> None:
        """Called after every epoch."""

    def finish(self, state: str, metrics: dict[str, float], reason: str | None) -> None:
        """Called once with ``COMPLETE``, ``PRUNED``, ``FAILED`` or ``INTERRUPTED``."""


TrialLoggerFactory = Callable[[int, dict[str, Any]], TrialLogger]
Claim = Callable[[], AbstractContextManager]


# --------------------------------------------------------------------------- storage


def resolve_storage(cfg: SearchConfig, n_workers: int | None = None) -> str:
    """Storage URL: ``MTL_OPTUNA_STORAGE``, else the config's, else a file in the state folder.

    The default is an SQLite file for one worker and a journal file for several,
    because SQLite storage is safe for one process only.
    """
    n_workers = n_workers or cfg.n_workers
    url = os.environ.get("MTL_OPTUNA_STORAGE") or cfg.storage
    if cfg.executor == "pool" and not is_server_storage(url):
        where = f"'{redact_url(url)}' is" if url else "the default (a file in the state folder) is"
        raise ConfigError(
            f"search.executor 'pool': the Optuna storage {where} on this machine only; trial "
            "workers need a database they all reach: set MTL_OPTUNA_STORAGE (or "
            "search.storage) to a PostgreSQL URL"
        )
    if url:
        if n_workers > 1 and url.startswith("sqlite"):
            raise ConfigError(
                f"search.storage '{url}': SQLite is for one process; with n_workers="
                f"{n_workers} use a journal file (*.log) or a PostgreSQL URL"
            )
        return url
    root = state_dir()
    root.mkdir(parents=True, exist_ok=True)
    if n_workers > 1:
        return str(root / "optuna-journal.log")
    return f"sqlite:///{root / 'optuna.db'}"


def is_server_storage(url: str | None) -> bool:
    """Whether ``url`` is a database server (PostgreSQL, MySQL), not a file on this machine."""
    if not url or "://" not in url or url.endswith(JOURNAL_SUFFIXES):
        return False
    return not url.startswith(("sqlite", "journal:"))


_SERVER_STORAGES: dict[tuple[int, str], optuna.storages.RDBStorage] = {}


def _forget_inherited_storages() -> None:
    """In a forked child: drop the parent's pools without closing the parent's connections."""
    for storage in _SERVER_STORAGES.values():
        storage.engine.dispose(close=False)
    _SERVER_STORAGES.clear()


os.register_at_fork(after_in_child=_forget_inherited_storages)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open a storage URL: a journal file path (``*.log``) or any SQLAlchemy RDB URL.

    RDB storages get a heartbeat, so that a trial whose worker died on another host is
    found (:func:`close_stale_trials`). An SQLite file may be shared by the runs of one
    host: it is created under a file lock, and writers wait for each other (up to
    :data:`SQLITE_BUSY_TIMEOUT_S`) instead of failing with "database is locked".

    A database server's storage is opened once per process and URL, with a small pool
    (:data:`SERVER_POOL`): a worker holds at most two connections however often it
    opens the study, so one server holds many workers (see the README's scale-out notes).
    """
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.journal.JournalStorage(backend)
    if "://" not in url:
        raise ConfigError(f"search.storage '{url}': expected a *.log journal file or an RDB URL")
    if is_server_storage(url):
        key = (os.getpid(), url)
        if key not in _SERVER_STORAGES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _SERVER_STORAGES[key] = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=dict(SERVER_POOL),
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                )
        return _SERVER_STORAGES[key]
    engine, creating = None, contextlib.nullcontext()
    sqlite_file = url.startswith("sqlite:///") and url != "sqlite:///:memory:"
    if sqlite_file:
        engine = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        # Two processes creating the tables at once would collide.
        creating = FileLock(url.removeprefix("sqlite:///") + ".lock")
    with creating, warnings.catch_warnings():  # the heartbeat is "experimental"; we rely on it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
        )
        if sqlite_file:
            sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
            storage.engine.dispose()  # the connection that created the tables predates it
    return storage


def _sqlite_wal(connection: Any, _record: Any) -> None:
    """Write-ahead logging for an SQLite study, synced at checkpoints rather than every commit.

    A search commits a few times per trial and epoch (ask, each parameter, each
    report, tell), and SQLite's default syncs the disk at every commit, which on
    small trials costs more than the trial's bookkeeping itself. In WAL mode with
    ``synchronous=NORMAL`` a commit is durable once the process has written it: a
    crash or kill of the process loses nothing, and the database stays consistent
    after a power cut, which may only roll back the last commits. Readers also no
    longer wait for a writer, which helps the runs of one host that share a file.
    """
    cursor = connection.cursor()
    try:
        # Persistent in the file once set. Switching needs the file to itself: if another
        # process holds it in the old mode, this connection works in that mode instead.
        with contextlib.suppress(sqlite3.OperationalError):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: ``(seed, number)`` mixed by NumPy's SeedSequence."""
    return int(np.random.SeedSequence([seed % 2**63, number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Samples each trial with a fresh sampler seeded from ``(seed, trial number)``.

    One sampler with one seed per process draws the same sequence in every process,
    so two runs sharing a study would try the same points. Trial numbers are unique
    across the processes that share a study, so seeding per trial makes concurrent
    workers draw different points, while one process searching alone repeats its
    trials for a given seed: trial k sees the same history and the same seed.

    Args:
        make: Builds the inner sampler from a seed (TPE and random keep no state
            between trials besides their random generator).
        seed: ``search.seed``.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}

    def _inner(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._by_trial:
            self._by_trial[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study, trial):  # noqa: D102
        return self._inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # noqa: D102
        return self._inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: D102
        return self._inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):  # noqa: D102
        self._inner(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):  # noqa: D102
        inner = self._by_trial.pop(trial.number, None)
        if inner is not None:
            inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's seed comes from its number."""


def build_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    """TPE (the default) or random sampling, seeded per trial (:class:`TrialSeededSampler`).

    TPE is multivariate with ``group=True``, which Optuna recommends for
    conditional spaces (an expert count exists only when an architecture with
    experts is chosen), and uses ``constant_liar`` so that workers sharing a study
    do not all sample next to the same promising point.
    """
    if cfg.sampler == "random":
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), cfg.seed)

    def tpe(seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():  # multivariate, group and constant_liar: "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=min(10, cfg.n_trials // 2 + 1),
                multivariate=True,
                group=True,
                constant_liar=True,
            )

    return TrialSeededSampler(tpe, cfg.seed)


def build_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    """Median pruner on the per-epoch validation objective, or none."""
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs
    )


def study_name(cfg: ExperimentConfig) -> str:
    """The study's name: ``search.study_name`` or the experiment name."""
    return cfg.search.study_name or cfg.tracking.experiment


def open_study(cfg: ExperimentConfig, storage_url: str) -> optuna.Study:
    """Create the study, or load it when it exists (this is what makes re-runs resume)."""
    return optuna.create_study(
        storage=open_storage(storage_url),
        sampler=build_sampler(cfg.search),
        pruner=build_pruner(cfg.search),
        study_name=study_name(cfg),
        direction="minimize",
        load_if_exists=True,
    )


def require_study(cfg: ExperimentConfig, storage_url: str) -> None:
    """Check that the study exists, as a trial worker does before searching it.

    Raises:
        SearchError: It does not: the worker's storage is not the one the run created
            the study in (a different ``MTL_OPTUNA_STORAGE``).
    """
    try:
        optuna.load_study(study_name=study_name(cfg), storage=open_storage(storage_url))
    except KeyError:
        raise SearchError(
            f"study '{study_name(cfg)}' not found in {redact_url(storage_url)}: this worker's "
            "Optuna storage (MTL_OPTUNA_STORAGE) must be the database of the run that started it"
        ) from None


def ran_to_an_outcome(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial completed, was pruned, or failed for a reason it recorded.

    A trial closed because its process was stopped or died (``interrupted``), or
    failed by Optuna's heartbeat without a reason, has no outcome and does not count.
    """
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and REASON_ATTR in attrs and INTERRUPTED_ATTR not in attrs


def finished_trials(study: optuna.Study) -> int:
    """Trials that ran to an outcome: what ``n_trials`` counts."""
    return sum(ran_to_an_outcome(t) for t in study.get_trials(deepcopy=False, states=FINISHED))


def _close_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Fail a RUNNING trial with ``reason``, as one without an outcome; False if already closed."""
    storage = study._storage  # Optuna's own fail_stale_trials works on the storage the same way
    try:
        storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, reason)
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, reason)
        return storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:  # another process closed it first
        return False


def close_stale_trials(
    study: optuna.Study, ownerless_after: timedelta = OWNERLESS_AFTER
) -> list[optuna.trial.FrozenTrial]:
    """Close RUNNING trials whose process is gone as FAIL, with the reason; returns them.

    A trial is stale when its owner ran on this host and is dead; when its owner
    ran on another host (or is unknown) and its RDB heartbeat is older than the
    grace period; or when it recorded no owner for ``ownerless_after``. A live
    owner on this host is never second-guessed. Closed trials carry
    ``fail_reason`` and ``interrupted`` and do not count toward ``n_trials``.
    """
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # RDB storages come wrapped in a cache
    silent: set[int] = set()
    grace = 0
    if isinstance(backend, optuna.storages.RDBStorage) and backend.heartbeat_interval:
        silent = set(backend._get_stale_trial_ids(study._study_id))
        grace = backend.grace_period or 2 * backend.heartbeat_interval
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = Owner.from_dict(trial.user_attrs.get(OWNER_ATTR))
        alive = owner.alive() if owner else None
        if alive is True:
            continue
        if alive is False:
            reason = f"stale: {owner.describe()} ended without finishing the trial"
        elif trial._trial_id in silent:
            who = f" from {owner.describe()}" if owner else ""
            reason = f"stale: no heartbeat{who} for over {grace} s"
        elif owner is None and datetime.now() - trial.datetime_start > ownerless_after:
            reason = f"stale: no owner recorded {ownerless_after.total_seconds():.0f} s after start"
        else:
            continue
        if _close_trial(study, trial, reason):
            closed.append(storage.get_trial(trial._trial_id))
    return closed


def close_labelled_trials(
    study: optuna.Study, key: str, value: str, reason: str
) -> list[optuna.trial.FrozenTrial]:
    """Close the RUNNING trials labelled ``key=value`` as failed without an outcome.

    Labels are user attrs (``labels`` of :func:`run_worker`). This is for a worker known
    to be gone (its flow run crashed) before its owner or its heartbeat can tell. The
    trials get ``reason`` and do not count toward ``n_trials``; returns them.
    """
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(key) == value and _close_trial(study, trial, reason):
            closed.append(study._storage.get_trial(trial._trial_id))
    return closed


def split_trials(remaining: int, n_workers: int) -> list[int]:
    """Split ``remaining`` trials over workers so that the total is exact."""
    return [remaining // n_workers + (i < remaining % n_workers) for i in range(n_workers)]


# --------------------------------------------------------------------------- search space


def simplex_weights(u: list[float], n_tasks: int) -> list[float]:
    """Map T-1 uniforms to T weights uniform on the simplex, scaled to sum to T.

    Stick-breaking with v_i = 1 - (1 - u_i)^(1/(T-i)) gives a uniform
    (Dirichlet(1)) point; T-1 free values leave no redundant scale, and a mean
    weight of 1 keeps the learning rate's meaning equal to the unweighted sum.
    """
    weights, rest = [], 1.0
    for i, ui in enumerate(u):
        v = 1.0 - (1.0 - ui) ** (1.0 / (n_tasks - 1 - i))
        weights.append(rest * v)
        rest -= rest * v
    weights.append(rest)
    return [w * n_tasks for w in weights]


# Architectures that have experts, so that ``search.n_experts`` applies to them.
EXPERT_ARCHS = ("mmoe", "ple")
# The Optuna parameters of the open choices: what sets a trial's shape and training code, so
# the trials of a batch share them under ``search.population_choices: shared``.
CHOICE_PARAMS = (
    "numeric",
    "numeric_embedding",
    "categorical",
    "arch",
    "n_experts",
    "weighting",
    "batch_size",
    "width",
    "depth",
)


def _choose(trial: optuna.Trial, name: str, choices: list | None, default: Any) -> Any:
    """``trial``'s pick among ``choices``; the config's ``default`` when the choice is closed."""
    if not choices:
        return default
    return trial.suggest_categorical(name, list(choices))


def suggest(trial: optuna.Trial, cfg: ExperimentConfig) -> dict[str, Any]:
    """Sample one point; returns flat keys (``tasks.a.weight``, ``loss.l1``, ``model.arch``, ...).

    Every key of the space is present in every trial, so logged params line up
    across trials: a penalty that is off is 0.0, and a parameter that does not
    apply to this trial's other choices is None (task weights under a weighting
    method that learns its own, an expert count for an architecture without
    experts).
    """
    from mtl_core.weighting import WEIGHTINGS

    space, tasks = cfg.search, cfg.task_names
    params: dict[str, Any] = {}
    # Representation, architecture and weighting first: the rest is conditional on them.
    for key in ("numeric", "numeric_embedding", "categorical"):
        if getattr(space, key):
            params[f"features.{key}"] = _choose(
                trial, key, getattr(space, key), getattr(cfg.features, key)
            )
    if space.frequency_scale is not None:
        embedding = params.get("features.numeric_embedding", cfg.features.numeric_embedding)
        rng = space.frequency_scale
        params["features.frequency_scale"] = (
            trial.suggest_float("frequency_scale", rng.low, rng.high, log=rng.log)
            if embedding == "periodic"
            else None
        )
    arch = _choose(trial, "arch", space.arch, cfg.model.arch)
    if space.arch:
        params["model.arch"] = arch
    if space.n_experts:
        params["model.n_experts"] = (
            trial.suggest_categorical("n_experts", list(space.n_experts))
            if arch in EXPERT_ARCHS
            else None
        )
    weighting = _choose(trial, "weighting", space.weighting, cfg.loss.weighting)
    if space.weighting:
        params["loss.weighting"] = weighting
    if space.weights and len(tasks) > 1:
        if WEIGHTINGS.lookup(weighting).learns_weights:
            params.update({f"tasks.{name}.weight": None for name in tasks})
        else:
            u = [trial.suggest_float(f"weight_u{i}", 0.0, 1.0) for i in range(len(tasks) - 1)]
            for name, w in zip(tasks, simplex_weights(u, len(tasks)), strict=True):
                params[f"tasks.{name}.weight"] = w
    for key, rng in (("l1", space.l1), ("l2", space.l2)):
        if rng is not None:
            on = trial.suggest_categorical(f"{key}_on", [True, False])
            params[f"loss.{key}"] = (
                trial.suggest_float(key, rng.low, rng.high, log=rng.log) if on else 0.0
            )
    if space.lr is not None:
        params["train.lr"] = trial.suggest_float(
            "lr", space.lr.low, space.lr.high, log=space.lr.log
        )
    if space.batch_size:
        params["train.batch_size"] = trial.suggest_categorical("batch_size", list(space.batch_size))
    if space.width:
        params["model.width"] = trial.suggest_categorical("width", list(space.width))
    if space.depth:
        params["model.depth"] = trial.suggest_categorical("depth", list(space.depth))
    if space.dropout is not None:
        params["model.dropout"] = trial.suggest_float(
            "dropout", space.dropout.low, space.dropout.high, log=space.dropout.log
        )
    return params


def apply_params(cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``cfg`` with sampled flat params applied (None values do not apply)."""
    data = cfg.model_dump()
    weights = {
        k.split(".")[1]: v for k, v in params.items() if k.startswith("tasks.") and v is not None
    }
    if weights:
        data["loss"]["weights"] = weights
    hidden = list(cfg.model.hidden) or [64]
    width = params.get("model.width")
    depth = params.get("model.depth")
    if width is not None or depth is not None:
        data["model"]["hidden"] = [int(width or hidden[0])] * int(depth or len(hidden))
    for key, value in params.items():
        if key.startswith("tasks.") or key in ("model.width", "model.depth") or value is None:
            continue
        section, name = key.split(".")
        data[section][name] = value
    return ExperimentConfig.model_validate(data)


# --------------------------------------------------------------------------- running


def _close(
    trial: optuna.Trial,
    logger: TrialLogger | None,
    state: str,
    metrics: dict[str, float],
    reason: str | None,
) -> None:
    """End the trial's log; a logging failure is kept as ``log_error``, never the outcome.

    The trial's result stands on its own: a tracking server that is down must not turn a
    finished trial into a failed one. The caller sees ``log_error`` and may stop the search.
    """
    if logger is None:
        return
    try:
        logger.finish(state, metrics, reason)
    except Exception as exc:
        trial.set_user_attr("log_error", f"{type(exc).__name__}: {exc}")


def _representations(data: PreparedData) -> Callable[[ExperimentConfig], PreparedData]:
    """``data`` in a trial's input representation, refitted once per scikit-learn representation."""
    variants: dict[tuple[str, str], PreparedData] = {}

    def represent(trial_cfg: ExperimentConfig) -> PreparedData:
        key = trial_cfg.features.preprocessing_key()
        if key not in variants:
            variants[key] = data.with_features(trial_cfg.features)
        return variants[key].with_features(trial_cfg.features)

    return represent


def make_objective(
    cfg: ExperimentConfig,
    data: PreparedData,
    device: str = "auto",
    logger_factory: TrialLoggerFactory | None = None,
) -> Callable[..., float]:
    """The Optuna objective: train with sampled params, return the best val objective.

    The objective takes the trial and an optional ``started(trial)``, called first
    thing, which :func:`run_worker` uses to stamp the trial's owner and release its claim.
    """
    represent = _representations(data)

    def objective(
        trial: optuna.Trial, started: Callable[[optuna.Trial], None] | None = None
    ) -> float:
        if started is not None:
            started(trial)
        params = suggest(trial, cfg)
        trial.set_user_attr("params", params)
        logger: TrialLogger | None = None

        def report(log: EpochLog) -> None:
            if logger is not None:
                logger.log_epoch(log)
            trial.report(log.val_objective, log.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {log.epoch}")

        try:
            if logger_factory is not None:
                logger = logger_factory(trial.number, params)
            trial_cfg = apply_params(cfg, params)
            trial_data = represent(trial_cfg)
            model, result = train_from_config(
                trial_cfg,
                trial_data,
                device=device,
                callbacks=[report],
                epochs=cfg.search.trial_epochs,
            )
            metrics = evaluate(model, trial_data, ("val",), device)  # never the test split
            # The epoch history already holds val/objective; the summary gets its own keys.
            metrics.pop("val/objective")
            metrics.update(
                {
                    "val/best_objective": result.best_val_objective,
                    "best_epoch": result.best_epoch,
                    "epochs_run": result.epochs_run,
                }
            )
        except optuna.TrialPruned as exc:
            _close(trial, logger, "PRUNED", {}, str(exc))
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(REASON_ATTR, reason)
            _close(trial, logger, "FAILED", {}, reason)
            if isinstance(exc, MTLError):
                return math.nan  # an expected failure: Optuna records FAIL without a traceback
            raise
        except BaseException as exc:  # KeyboardInterrupt, or a signal turned into an exception
            reason = interruption(exc)
            with contextlib.suppress(Exception):  # the storage may be what is going away
                trial.set_user_attr(REASON_ATTR, reason)
                trial.set_user_attr(INTERRUPTED_ATTR, reason)
            _close(trial, logger, "INTERRUPTED", {}, reason)
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", result.epochs_run)
        _close(trial, logger, "COMPLETE", metrics, None)
        return result.best_val_objective

    return objective


def interruption(exc: BaseException) -> str:
    """``interrupted by SIGTERM``, or by whatever stopped the process."""
    signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None
    signum = signum or getattr(exc, "signal", None) or getattr(exc, "signum", None)
    try:
        return f"interrupted by {signal.Signals(signum).name}"
    except ValueError:
        return f"interrupted: {type(exc).__name__}"


def _claimed(study: optuna.Study) -> int:
    """Trials that count toward ``n_trials`` or are running (each may still count)."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(t.state == TrialState.RUNNING or ran_to_an_outcome(t) for t in trials)


def _close_own_trials(study: optuna.Study, reason: str) -> None:
    """Close this process's RUNNING trials (it is being stopped) as interrupted."""
    me = Owner.current().as_dict()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(OWNER_ATTR) == me:
            _close_trial(study, trial, reason)


def run_worker(
    cfg: ExperimentConfig,
    data: PreparedData,
    storage_url: str,
    n_trials: int,
    timeout_s: float | None = None,
    device: str = "auto",
    logger_factory: TrialLoggerFactory | None = None,
    progress: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    torch_threads: int | None = None,
    claim: Claim | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    until_full: bool = False,
    labels: dict[str, str] | None = None,
) -> int:
    """Run up to ``n_trials`` trials of the stored study in this process.

    The worker claims each trial only while the study holds fewer than
    ``cfg.search.n_trials`` trials that count or run, so that the study ends with
    exactly that many trials that ran to an outcome however many processes share
    it; when the study holds that many, stale trials (:func:`close_stale_trials`)
    are closed first and their places taken. ``claim`` makes that check and the
    trial's creation atomic across processes (a file lock, or a Prefect concurrency
    slot); without it, two processes that check at the same moment may both take
    the last trial. The claim is released as soon as the trial exists and records
    its owner; its labels are written after.

    Failed trials (any exception) are recorded with their reason and do not
    stop the worker. If the worker is interrupted (KeyboardInterrupt, a signal
    raised as an exception), its running trial is closed as interrupted.

    Args:
        cfg: The experiment; ``cfg.search.n_trials`` is the study's total.
        data: Prepared data.
        storage_url: Optuna storage (see :func:`open_storage`).
        n_trials: The most trials this worker runs.
        timeout_s: Start no trial after this many seconds.
        device: Torch device.
        logger_factory: Builds each trial's logger from its number and params.
        progress: Called after each trial with the study and the finished trial.
        torch_threads: Torch threads of this process.
        claim: Returns a context manager held while a trial is claimed.
        should_stop: Checked after each trial (and while waiting); True stops the worker.
        until_full: When every remaining trial is claimed by other processes, wait
            (every :data:`POLL_S`) until they have run to an outcome instead of
            returning; a trial whose process died is then closed as stale and run
            here. Trial workers of a work pool run this way.
        labels: User attrs set on each trial this worker runs (e.g. its flow run).

    Returns:
        The number of trials this worker ran.
    """
    if torch_threads:
        torch.set_num_threads(torch_threads)
    if n_trials <= 0:
        return 0
    study = open_study(cfg, storage_url)
    claim = claim or contextlib.nullcontext
    if cfg.search.population > 1 or cfg.search.cv_folds > 1:
        callbacks = [progress] if progress else []
        return run_batches(
            cfg,
            data,
            study,
            n_trials,
            timeout_s,
            device,
            logger_factory,
            callbacks,
            claim,
            should_stop,
            until_full=until_full,
            labels=labels,
        )
    objective = make_objective(cfg, data, device, logger_factory)
    return run_trials(
        study,
        objective,
        cfg.search.n_trials,
        n_trials,
        timeout_s,
        progress,
        claim,
        should_stop,
        until_full=until_full,
        labels=labels,
    )


def run_trials(
    study: optuna.Study,
    objective: Callable[..., float],
    total: int,
    n_trials: int,
    timeout_s: float | None = None,
    progress: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    claim: Claim | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    until_full: bool = False,
    labels: dict[str, str] | None = None,
) -> int:
    """The claim loop of :func:`run_worker`, for any objective of ``(trial, started)``.

    ``objective`` must call ``started(trial)`` first thing (as :func:`make_objective`'s
    does); ``total`` is the study's ``n_trials``. The other arguments are
    :func:`run_worker`'s. Returns the number of trials this process ran.
    """
    claim = claim or contextlib.nullcontext
    owner = Owner.current().as_dict()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    ran: list[int] = []  # trials of this worker only; others may share the study
    callbacks = [lambda study, trial: ran.append(trial.number)]
    if progress:
        callbacks.append(progress)
    try:
        while len(ran) < n_trials and not (deadline and time.monotonic() >= deadline):
            with contextlib.ExitStack() as held:
                held.enter_context(claim())
                full = _claimed(study) >= total
                if full and close_stale_trials(study):  # only a full study needs their slots
                    full = _claimed(study) >= total
                if not full:

                    def started(trial: optuna.Trial, held=held) -> None:
                        # Owned, the trial counts and can be closed if this process dies: the
                        # next claim may proceed. Labels are written after (each write is a
                        # commit, and the claim serialises every worker of the study).
                        trial.set_user_attr(OWNER_ATTR, owner)
                        held.close()
                        for key, value in (labels or {}).items():
                            trial.set_user_attr(key, value)

                    study.optimize(
                        lambda trial, started=started: objective(trial, started),
                        n_trials=1,
                        catch=(Exception,),
                        callbacks=callbacks,
                    )
            if full:
                if not until_full or finished_trials(study) >= total:
                    break
                time.sleep(POLL_S)  # others' trials run; one whose process died turns stale
            if should_stop and should_stop():
                break
    except BaseException as exc:
        with contextlib.suppress(Exception):
            _close_own_trials(study, interruption(exc))
        raise
    return len(ran)


# --------------------------------------------------------------------------- batches


class _BatchStudy:
    """The study as the callbacks of a batched search see it.

    ``Study.stop`` works only inside ``Study.optimize``; here it ends the search
    after the batch in progress, as it ends ``optimize`` after the trial in progress.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study, self.stopped = study, False

    def stop(self) -> None:
        """Run no further batch."""
        self.stopped = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class _PrunerView:
    """The study as the pruner sees it for one epoch of a batch: completed trials read once.

    ``Trial.should_prune`` hands the pruner the study, and the median pruner reads the
    study's completed trials on every call; through the storage's cache that re-reads
    every RUNNING trial of the batch, K reads of K trials an epoch. No trial of the
    batch completes during one epoch's reports (they are told after training), so one
    read serves them all; a trial another worker completes meanwhile counts from the
    next epoch's read. Everything else is the study's.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._completed: list[optuna.trial.FrozenTrial] | None = None

    def get_trials(self, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        if states is not None and tuple(states) == (TrialState.COMPLETE,) and not deepcopy:
            if self._completed is None:
                self._completed = self._study.get_trials(deepcopy=False, states=states)
            return self._completed
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def should_prune(self, trial: optuna.Trial) -> bool:
        """``trial.should_prune()``, with this view as the study."""
        # What Trial.should_prune does, but with this view: the trial as reported so far.
        return self._study.pruner.prune(self, trial._get_latest_trial())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class _SiblingFailed(Exception):
    """Stops a trial's other folds once one of them failed: the trial has failed."""


@dataclass
class _TrialRun:
    """One trial of a batch: its members (folds) and what it reported so far."""

    trial: optuna.Trial
    params: dict[str, Any] = field(default_factory=dict)
    logger: TrialLogger | None = None
    members: list[int] = field(default_factory=list)
    history: list[EpochLog] = field(default_factory=list)
    last: dict[int, EpochLog] = field(default_factory=dict)  # each member's latest epoch
    pruned: optuna.TrialPruned | None = None
    failed: bool = False
    frozen: optuna.trial.FrozenTrial | None = None


def _mean_log(logs: list[EpochLog], epoch: int) -> EpochLog:
    """The folds' epoch logs as one: every loss averaged; a fold that ended counts its last."""
    if len(logs) == 1:
        return dataclasses.replace(logs[0], epoch=epoch)

    def mean(key: str, task: str | None = None) -> float:
        vals = [getattr(log, key) if task is None else getattr(log, key)[task] for log in logs]
        return statistics.fmean(vals)

    tasks = list(logs[0].val_task_losses)
    return EpochLog(
        epoch,
        mean("train_loss"),
        {t: mean("train_task_losses", t) for t in tasks},
        mean("val_objective"),
        {t: mean("val_task_losses", t) for t in tasks},
        logs[0].lr,
        max(log.seconds for log in logs),
    )


def _mean_history(histories: list[list[EpochLog]]) -> list[EpochLog]:
    """Per epoch, :func:`_mean_log` of the folds (a fold that stopped early counts its last)."""
    out = []
    for epoch in range(1, max(len(h) for h in histories) + 1):
        out.append(_mean_log([h[min(epoch, len(h)) - 1] for h in histories if h], epoch))
    return out


def _log_epoch(run: _TrialRun, log: EpochLog) -> None:
    if run.logger is None:
        return
    try:
        run.logger.log_epoch(log)
    except Exception as exc:  # a log never changes the trial's outcome
        run.trial.set_user_attr("log_error", f"{type(exc).__name__}: {exc}")


def _fail(study: optuna.Study, run: _TrialRun, reason: str) -> optuna.trial.FrozenTrial:
    run.trial.set_user_attr(REASON_ATTR, reason)
    _close(run.trial, run.logger, "FAILED", {}, reason)
    run.frozen = study.tell(run.trial, state=optuna.trial.TrialState.FAIL)
    return run.frozen


def _epoch_reports(runs: list[_TrialRun]) -> Callable[[EpochEvent], dict[int, BaseException]]:
    """``on_epoch`` of a batch: each trial's mean over its folds, reported to its trial.

    A trial is reported to (and may be pruned) only when all its folds train in
    one group, which is the rule: folds of one trial share their shapes. Pruning
    or a failed fold stops the trial's other folds at once.
    """

    def on_epoch(event: EpochEvent) -> dict[int, BaseException]:
        group, stops = set(event.group), {}
        seen: _PrunerView | None = None
        for run in runs:
            mine = [i for i in run.members if i in event.logs or i in event.ended]
            if run.pruned or run.failed or not mine or not set(run.members) <= group:
                continue
            if any(event.ended.get(i) is not None for i in mine):
                run.failed = True
                stops.update({i: _SiblingFailed("another fold failed") for i in run.members})
                continue
            run.last.update({i: event.logs[i] for i in mine if i in event.logs})
            if not any(i in event.logs for i in mine):
                continue
            log = _mean_log([run.last[i] for i in run.members], event.epoch)
            run.history.append(log)
            _log_epoch(run, log)
            run.trial.report(log.val_objective, event.epoch)
            seen = seen or _PrunerView(run.trial.study)
            if seen.should_prune(run.trial):
                run.pruned = optuna.TrialPruned(f"pruned at epoch {event.epoch}")
                stops.update({i: run.pruned for i in run.members})
        return stops

    return on_epoch


def _finish(
    study: optuna.Study,
    run: _TrialRun,
    members: list[Member],
    outcomes: list[tuple[Any, MemberResult]],
    device: str,
) -> optuna.trial.FrozenTrial:
    """Tell one trial of a batch how it ended, and close its log."""
    folds = len(members) > 1
    for j, (_, res) in enumerate(outcomes):
        if res.error is not None and not isinstance(res.error, optuna.TrialPruned | _SiblingFailed):
            reason = f"{type(res.error).__name__}: {res.error}"
            return _fail(study, run, f"fold {j}: {reason}" if folds else reason)
    if run.pruned is not None:
        _close(run.trial, run.logger, "PRUNED", {}, str(run.pruned))
        run.frozen = study.tell(run.trial, state=optuna.trial.TrialState.PRUNED)
        return run.frozen
    results = [res for _, res in outcomes]
    if not run.history:  # folds trained in different groups: log their mean now
        for log in _mean_history([r.history for r in results]):
            _log_epoch(run, log)
    try:
        per_fold = [
            evaluate(model, m.data, ("val",), device)  # never the test split
            for (model, _), m in zip(outcomes, members, strict=True)
        ]
    except Exception as exc:
        return _fail(study, run, f"{type(exc).__name__}: {exc}")
    # A metric a fold cannot give (AUC on a fold with one class) is averaged over the rest.
    keys = dict.fromkeys(k for f in per_fold for k in f)
    metrics = {k: statistics.fmean(f[k] for f in per_fold if k in f) for k in keys}
    metrics.pop("val/objective", None)  # the epoch history holds it; the summary has its own
    values = [r.best_val_objective for r in results]
    value = statistics.fmean(values)
    best_epoch = round(statistics.fmean(r.best_epoch for r in results))
    epochs_run = max(r.epochs_run for r in results)
    metrics.update(
        {"val/best_objective": value, "best_epoch": best_epoch, "epochs_run": epochs_run}
    )
    if folds:
        metrics.update({f"val/fold_objective/{j}": v for j, v in enumerate(values)})
        metrics["val/fold_std"] = statistics.stdev(values)
        run.trial.set_user_attr("fold_objectives", values)
        run.trial.set_user_attr("fold_std", metrics["val/fold_std"])
    run.trial.set_user_attr("best_epoch", best_epoch)
    run.trial.set_user_attr("epochs_run", epochs_run)
    _close(run.trial, run.logger, "COMPLETE", metrics, None)
    run.frozen = study.tell(run.trial, value)
    return run.frozen


def _ask(study: optuna.Study, beats: contextlib.ExitStack, stamp: dict) -> optuna.Trial:
    """A new trial, owned by this process, whose heartbeat runs until ``beats`` closes.

    ``stamp`` holds the user attrs set first: the owner, and the worker's labels.

    (Optuna has no public API for heartbeats outside ``optimize``; ``_heartbeat`` is
    what ``optimize`` uses.)
    """
    from optuna.storages._heartbeat import get_heartbeat_thread

    with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": it is, here
        warnings.filterwarnings("ignore", message="Heartbeat")
        trial = study.ask()
    for key, value in stamp.items():
        trial.set_user_attr(key, value)
    beats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
    return trial


def run_batch(
    cfg: ExperimentConfig,
    study: optuna.Study,
    n: int,
    trial_data: Callable[[ExperimentConfig], list[PreparedData]],
    device: str = "auto",
    logger_factory: TrialLoggerFactory | None = None,
    claim: Claim | None = None,
    labels: dict[str, str] | None = None,
) -> list[optuna.trial.FrozenTrial]:
    """Ask up to ``n`` trials, train them together, tell each its outcome; returns them, told.

    ``trial_data(trial_cfg)`` gives a trial's data: one split, or its k folds.
    Trials whose set-up fails are told FAIL at once. When the logger factory
    fails (a tracking server that is down), no further trial is asked for this
    batch, as the sequential search fails one trial and not K. If the batch is
    interrupted (an exception escapes, KeyboardInterrupt included), every trial
    not yet told is closed, so none stays RUNNING: as interrupted (not counting
    toward ``n_trials``) when the process is being stopped, as FAIL otherwise.

    The trials are asked under ``claim``, only as many as keep the study within
    ``cfg.search.n_trials`` trials that count or run (closing stale trials when that
    is fewer than ``n``), as :func:`run_worker` does for single trials. Each trial
    gets ``labels`` as user attrs.

    Under ``search.population_choices: shared`` the batch's first trial that trains
    samples everything; each later trial is enqueued (``Study.enqueue_trial``) with
    that trial's open choices (:data:`CHOICE_PARAMS`) fixed, so the sampler draws only
    its ranges (weights, penalties, learning rate, dropout, frequency scale) and the
    batch trains as one model instead of one group per shape.
    """
    runs: list[_TrialRun] = []
    live: list[_TrialRun] = []
    members: list[Member] = []
    stamp = {OWNER_ATTR: Owner.current().as_dict(), **(labels or {})}
    # Under ``population_choices: shared``, the open choices of the batch's first trial that
    # trains; the later trials are enqueued with them fixed and sample only the ranges.
    shared: dict[str, Any] | None = None
    try:
        with contextlib.ExitStack() as beats:
            # The claim covers asking the batch: its trials count once they exist and are owned.
            with (claim or contextlib.nullcontext)():
                free = cfg.search.n_trials - _claimed(study)
                if free < n and close_stale_trials(study):  # their slots are needed
                    free = cfg.search.n_trials - _claimed(study)
                n = min(n, free)
                while len(runs) < n:
                    if shared:
                        study.enqueue_trial(shared, skip_if_exists=False)
                    run = _TrialRun(_ask(study, beats, stamp))
                    runs.append(run)
                    try:
                        run.params = suggest(run.trial, cfg)
                        run.trial.set_user_attr("params", run.params)
                    except Exception as exc:
                        _fail(study, run, f"{type(exc).__name__}: {exc}")
                        continue
                    if logger_factory is not None:
                        try:
                            run.logger = logger_factory(run.trial.number, run.params)
                        except Exception as exc:
                            _fail(study, run, f"{type(exc).__name__}: {exc}")
                            break
                    try:
                        trial_cfg = apply_params(cfg, run.params)
                        new = [Member(trial_cfg, d) for d in trial_data(trial_cfg)]
                    except Exception as exc:
                        _fail(study, run, f"{type(exc).__name__}: {exc}")
                        continue
                    run.members = list(range(len(members), len(members) + len(new)))
                    members += new
                    live.append(run)
                    if shared is None and cfg.search.population_choices == "shared":
                        p = run.trial.params
                        shared = {k: p[k] for k in CHOICE_PARAMS if k in p}
            outcomes = train_population(
                members,
                device=device,
                epochs=cfg.search.trial_epochs,
                on_epoch=_epoch_reports(live),
            )
            for run in live:
                _finish(
                    study,
                    run,
                    [members[i] for i in run.members],
                    [outcomes[i] for i in run.members],
                    device,
                )
    except BaseException as exc:
        for run in runs:
            if run.frozen is not None:
                continue
            if isinstance(exc, Exception):  # a failure of the batch itself: the trials failed
                _fail(study, run, f"batch failed: {type(exc).__name__}: {exc}")
            else:  # the process is being stopped: no outcome, so the trials do not count
                reason = interruption(exc)
                with contextlib.suppress(Exception):
                    _close(run.trial, run.logger, "INTERRUPTED", {}, reason)
                    _close_trial(study, run.trial, reason)
        raise
    return [run.frozen for run in runs]


def _startup_room(cfg: ExperimentConfig, study: optuna.Study) -> int:
    """The most trials the next batch may hold while the pruner is still starting up.

    The median pruner compares a trial with completed trials only, never with those
    of its own batch. Until the study holds ``pruner_startup_trials`` completed
    trials, a batch holds just the trials still missing, so that the batches after
    it can be pruned; a first batch of K would run all K unpruned.
    """
    need = cfg.search.pruner_startup_trials if cfg.search.pruner != "none" else 0
    if need == 0:
        return cfg.search.population
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return cfg.search.population if done >= need else need - done


def run_batches(
    cfg: ExperimentConfig,
    data: PreparedData,
    study: optuna.Study,
    n_trials: int,
    timeout_s: float | None = None,
    device: str = "auto",
    logger_factory: TrialLoggerFactory | None = None,
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
    claim: Claim | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    until_full: bool = False,
    labels: dict[str, str] | None = None,
) -> int:
    """Run ``n_trials`` trials in batches of ``search.population`` (never more than asked for).

    While the median pruner starts up, batches are smaller (:func:`_startup_room`).

    Each callback gets every trial once it is told, as ``Study.optimize``'s do;
    ``study.stop()`` there, or ``should_stop()`` returning True, ends the search
    after the batch. No batch starts after ``timeout_s``. ``claim`` is held while a
    batch's trials are asked (see :func:`run_batch`). ``until_full`` and ``labels``
    are :func:`run_worker`'s.

    Returns:
        The number of trials run.
    """
    represent = _representations(data)
    folds: dict[tuple[str, str], list[PreparedData]] = {}
    k = cfg.search.cv_folds

    def trial_data(trial_cfg: ExperimentConfig) -> list[PreparedData]:
        if k <= 1:
            return [represent(trial_cfg)]
        key = trial_cfg.features.preprocessing_key()
        if key not in folds:
            folds[key] = represent(trial_cfg).cv_folds(k, cfg.data.split_seed)
        return [f.with_features(trial_cfg.features) for f in folds[key]]

    view, ran, t0 = _BatchStudy(study), 0, time.monotonic()
    while ran < n_trials and not view.stopped:
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            break
        size = min(cfg.search.population, n_trials - ran, _startup_room(cfg, study))
        told = run_batch(cfg, study, size, trial_data, device, logger_factory, claim, labels)
        if not told:  # the study already holds n_trials trials that count or run
            if not until_full or finished_trials(study) >= cfg.search.n_trials:
                break
            time.sleep(POLL_S)  # others' trials run; one whose process died turns stale
            if should_stop and should_stop():
                break
            continue
        ran += len(told)
        for frozen in told:
            for cb in callbacks or []:
                cb(view, frozen)
        if should_stop and should_stop():
            break
    return ran


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best completed trial; a study with none raises a SearchError with the reasons."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        reasons = sorted({t.user_attrs.get(REASON_ATTR, "unknown") for t in failed})
        raise SearchError(
            f"study '{study.study_name}': no trial completed ({len(failed)} failed"
            + (f"; reasons: {'; '.join(reasons)[:300]}" if reasons else "")
            + ")"
        )
    return min(done, key=lambda t: t.value if t.value is not None else math.inf)


def top_trials(study: optuna.Study, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` best completed trials as plain rows (number, value, params)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    rows = []
    for t in sorted(done, key=lambda t: t.value)[:k]:
        rows.append({"trial": t.number, "val_objective": t.value, **t.user_attrs.get("params", {})})
    return rows
