"""Search: the sampled space, exact trial counts across resumes, and failed trials."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from datetime import timedelta

import numpy as np
import optuna
import pytest

from mtl_core.config import flat_params
from mtl_core.data import prepare
from mtl_core.errors import ConfigError, SearchError
from mtl_core.integrations import search
from mtl_core.owner import Owner
from mtl_core.redact import redact_url

STUDY = [
    "search.n_trials=5",
    "search.sampler=random",
    "search.pruner=none",
    "search.trial_epochs=2",
    "tracking.experiment=unit-search",
]


@pytest.fixture(autouse=True)
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(level)


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'o.db'}"


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


# --------------------------------------------------------------------------- space


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 5, 8])
def test_simplex_weights_sum_to_t_and_are_non_negative(n_tasks):
    rng = np.random.default_rng(n_tasks)
    for _ in range(200):
        w = search.simplex_weights(list(rng.random(n_tasks - 1)), n_tasks)
        assert len(w) == n_tasks
        assert sum(w) == pytest.approx(n_tasks, abs=1e-9)
        assert min(w) >= 0.0
    assert search.simplex_weights([0.0] * (n_tasks - 1), n_tasks)[-1] == pytest.approx(n_tasks)


def test_simplex_weights_are_uniform_on_the_simplex():
    # Dirichlet(1, 1, 1) scaled by T = 3: every weight has mean 1 and P(w_i > 1.5) = 1/4.
    rng = np.random.default_rng(0)
    w = np.array([search.simplex_weights(list(rng.random(2)), 3) for _ in range(20000)])
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.03)
    np.testing.assert_allclose((w > 1.5).mean(axis=0), 0.25, atol=0.02)


def test_suggest_gives_the_same_keys_in_every_trial(tiny_synthetic):
    cfg = tiny_synthetic(
        *STUDY, "search.width=[8, 16]", "search.dropout={low: 0.0, high: 0.3, log: false}"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = [search.suggest(study.ask(), cfg) for _ in range(20)]
    keys = {
        "tasks.y0_value.weight",
        "tasks.y1_positive.weight",
        "loss.l1",
        "loss.l2",
        "train.lr",
        "model.width",
        "model.dropout",
    }
    assert all(set(p) == keys for p in params)
    assert any(p["loss.l1"] == 0.0 for p in params)  # a penalty switched off is logged as 0.0
    assert any(p["loss.l1"] > 0.0 for p in params)
    for p in params:
        assert p["tasks.y0_value.weight"] + p["tasks.y1_positive.weight"] == pytest.approx(2.0)
        assert 1e-4 <= p["train.lr"] <= 1e-2
        assert p["model.width"] in (8, 16)


def test_suggest_with_penalties_off(tiny_synthetic):
    cfg = tiny_synthetic()
    trial = optuna.trial.FixedTrial({"weight_u0": 0.25, "l1_on": False, "l2_on": False, "lr": 2e-3})
    params = search.suggest(trial, cfg)
    assert params == {
        "tasks.y0_value.weight": pytest.approx(0.5),
        "tasks.y1_positive.weight": pytest.approx(1.5),
        "loss.l1": 0.0,
        "loss.l2": 0.0,
        "train.lr": 2e-3,
    }
    # Searching neither weights nor penalties leaves only the learning rate.
    space = cfg.search.model_copy(update={"weights": False, "l1": None, "l2": None})
    closed = cfg.model_copy(update={"search": space})
    assert search.suggest(optuna.trial.FixedTrial({"lr": 1e-3}), closed) == {"train.lr": 1e-3}
    # One task: no weight to search.
    one = tiny_synthetic("data.tasks=[{name: a, column: y0, type: regression}]")
    assert "tasks.a.weight" not in search.suggest(trial, one)


CHOICES = [
    "search.arch=[shared_bottom, mmoe]",
    "search.n_experts=[2, 3]",
    "search.weighting=[static]",
    "search.depth=[1, 2]",
    "search.width=[8, 16]",
    "search.batch_size=[32, 64]",
    "search.numeric=[standard, quantile]",
    "search.numeric_embedding=[none, periodic, piecewise_linear]",
    "search.categorical=[onehot, embedding]",
]


def test_open_choices_are_sampled_with_conditional_parameters(tiny_synthetic, monkeypatch):
    from mtl_core.arch import ARCHS
    from mtl_core.weighting import WEIGHTINGS, Weighting

    # Stand-ins, so the test does not depend on which members exist: an architecture with
    # experts, and a weighting method that learns its own weights.
    monkeypatch.setitem(ARCHS, "mmoe", ARCHS["shared_bottom"])
    monkeypatch.setitem(WEIGHTINGS, "learned", type("Learned", (Weighting,), {}))
    cfg = tiny_synthetic(
        *STUDY,
        *CHOICES,
        "search.weighting=[static, learned]",
        "search.frequency_scale={low: 0.3, high: 30.0}",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = [search.suggest(study.ask(), cfg) for _ in range(60)]
    keys = set(params[0])
    assert keys >= {
        "model.arch",
        "model.n_experts",
        "loss.weighting",
        "model.depth",
        "model.width",
        "train.batch_size",
        "features.numeric",
        "features.numeric_embedding",
        "features.categorical",
        "features.frequency_scale",
        "tasks.y0_value.weight",
    }
    assert all(set(p) == keys for p in params)  # the same keys in every trial
    for p in params:
        # Expert counts only for an architecture with experts.
        assert (p["model.n_experts"] is None) == (p["model.arch"] != "mmoe")
        # A frequency scale only for periodic numeric embeddings, within its range.
        periodic = p["features.numeric_embedding"] == "periodic"
        assert (p["features.frequency_scale"] is None) == (not periodic)
        if periodic:
            assert 0.3 <= p["features.frequency_scale"] <= 30.0
            applied = search.apply_params(cfg, p).features.frequency_scale
            assert applied == p["features.frequency_scale"]
        # Static task weights only for the static weighting.
        assert (p["tasks.y0_value.weight"] is None) == (p["loss.weighting"] == "learned")
    seen = {k: {p[k] for p in params} for k in keys if not k.startswith("tasks.")}
    assert seen["features.numeric_embedding"] == {"none", "periodic", "piecewise_linear"}
    assert seen["model.arch"] == {"shared_bottom", "mmoe"}
    assert seen["loss.weighting"] == {"static", "learned"}
    # The Optuna trial itself holds no expert count when the architecture has none.
    for trial in study.trials:
        assert ("n_experts" in trial.params) == (trial.params["arch"] == "mmoe")


def test_every_range_and_choice_of_the_search_config_is_sampled(tiny_synthetic):
    # A range or list field of SearchConfig that suggest() never reads would be a config
    # key silently ignored (a merge once dropped frequency_scale that way).
    import typing

    from mtl_core.config import Range, SearchConfig

    def open_field(annotation) -> bool:
        args = typing.get_args(annotation)
        return (
            annotation is Range or Range in args or any(typing.get_origin(a) is list for a in args)
        )

    fields = {n for n, f in SearchConfig.model_fields.items() if open_field(f.annotation)}
    assert {"lr", "l1", "l2", "arch", "frequency_scale"} <= fields
    cfg = tiny_synthetic(
        *STUDY,
        *CHOICES,
        "search.frequency_scale={low: 0.3, high: 30.0}",
        "search.dropout={low: 0.0, high: 0.3, log: false}",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = set()
    for _ in range(30):
        p = search.suggest(study.ask(), cfg)
        sampled |= {key.split(".")[-1] for key, value in p.items() if value is not None}
    assert fields <= sampled, f"never sampled: {sorted(fields - sampled)}"


def test_applied_choices_train(tiny_synthetic, storage):
    cfg = tiny_synthetic(*STUDY, *CHOICES[2:], "search.n_trials=4")
    data = prepare(cfg.data, cfg.features)
    assert search.run_worker(cfg, data, storage, 4, device="cpu") == 4
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE"] * 4
    for trial in study.trials:
        trial_cfg = search.apply_params(cfg, trial.user_attrs["params"])
        p = trial.user_attrs["params"]
        assert trial_cfg.model.hidden == [p["model.width"]] * p["model.depth"]
        assert trial_cfg.train.batch_size == p["train.batch_size"]
        assert trial_cfg.features.numeric_embedding == p["features.numeric_embedding"]


def test_search_choices_are_validated(tiny_synthetic):
    with pytest.raises(ConfigError, match=r"search\.arch.*unknown architecture"):
        tiny_synthetic("search.arch=[shared_bottom, transformer]")
    with pytest.raises(ConfigError, match=r"search\.weighting.*unknown weighting"):
        tiny_synthetic("search.weighting=[nope]")
    with pytest.raises(ConfigError, match=r"search\.numeric_embedding"):
        tiny_synthetic("search.numeric_embedding=[fourier]")
    with pytest.raises(ConfigError, match=r"search\.width"):
        tiny_synthetic("search.width=[]")


def test_apply_params(tiny_synthetic):
    cfg = tiny_synthetic("model.hidden=[16, 16]")
    params = {
        "tasks.y0_value.weight": 0.5,
        "tasks.y1_positive.weight": 1.5,
        "loss.l1": 0.0,
        "loss.l2": 1e-3,
        "train.lr": 5e-3,
        "model.width": 32,
        "model.dropout": 0.1,
    }
    out = search.apply_params(cfg, params)
    assert out.loss.weights == {"y0_value": 0.5, "y1_positive": 1.5}
    # None marks a parameter that does not apply to the trial's other choices.
    unweighted = search.apply_params(
        cfg,
        {
            **params,
            "tasks.y0_value.weight": None,
            "tasks.y1_positive.weight": None,
            "model.depth": 3,
        },
    )
    assert unweighted.loss.weights is None
    assert unweighted.model.hidden == [32, 32, 32]
    assert (out.loss.l1, out.loss.l2, out.train.lr) == (0.0, 1e-3, 5e-3)
    assert out.model.hidden == [32, 32]
    assert out.model.dropout == 0.1
    assert cfg.loss.weights is None and cfg.train.lr == 1e-3  # the input is untouched
    assert flat_params(out).keys() == flat_params(cfg).keys()
    assert flat_params(out)["tasks.y1_positive.weight"] == "1.5"


@pytest.mark.parametrize("n_workers", [1, 2, 3, 7])
def test_split_trials_sums_exactly(n_workers):
    for remaining in range(0, 30):
        shares = search.split_trials(remaining, n_workers)
        assert len(shares) == n_workers
        assert sum(shares) == remaining
        assert max(shares) - min(shares) <= 1


# --------------------------------------------------------------------------- storage


def test_default_storage_lives_in_the_state_folder(tiny_synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_STATE_DIR", str(tmp_path / "st"))
    cfg = tiny_synthetic()
    assert search.resolve_storage(cfg.search) == f"sqlite:///{tmp_path / 'st' / 'optuna.db'}"
    assert search.resolve_storage(cfg.search, n_workers=2) == str(
        tmp_path / "st" / "optuna-journal.log"
    )
    shared = cfg.search.model_copy(update={"storage": "sqlite:///x.db"})
    with pytest.raises(ConfigError, match="SQLite is for one process"):
        search.resolve_storage(shared, n_workers=2)


def test_pool_mode_refuses_a_storage_on_this_machine(tiny_synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_STATE_DIR", str(tmp_path / "st"))
    monkeypatch.delenv("MTL_OPTUNA_STORAGE", raising=False)
    cfg = tiny_synthetic("search.executor=pool").search
    with pytest.raises(ConfigError, match="the default .* is on this machine only") as exc:
        search.resolve_storage(cfg)
    assert "PostgreSQL" in str(exc.value) and "\n" not in str(exc.value)
    for url in ("sqlite:///x.db", str(tmp_path / "j.log"), "journal:/tmp/x"):
        with pytest.raises(ConfigError, match="search.executor 'pool'"):
            search.resolve_storage(cfg.model_copy(update={"storage": url}))
    with pytest.raises(ConfigError) as exc:  # a password is never shown
        search.resolve_storage(cfg.model_copy(update={"storage": "sqlite://u:secret@h/x"}))
    assert "secret" not in str(exc.value)
    server = "postgresql+psycopg2://mtl:secret@db:5432/optuna"
    monkeypatch.setenv("MTL_OPTUNA_STORAGE", server)
    assert search.resolve_storage(cfg) == server
    assert redact_url(server) == "postgresql+psycopg2://mtl:***@db:5432/optuna"


def test_sqlite_study_is_write_ahead_logged_and_read_by_a_new_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = search.open_storage(url)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    study = optuna.create_study(study_name="s", storage=storage)
    study.tell(study.ask(), 0.5)
    # What one storage committed is there for another (a resumed run), and for plain sqlite3.
    again = optuna.load_study(study_name="s", storage=search.open_storage(url))
    assert [t.value for t in again.trials] == [0.5]
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "optuna.db")) as raw:
        assert raw.execute("SELECT value FROM trial_values").fetchall() == [(0.5,)]


# --------------------------------------------------------------------------- running


def test_study_resumes_to_exactly_n_trials(tiny_synthetic, storage):
    cfg = tiny_synthetic(*STUDY)
    data = prepare(cfg.data)
    assert search.run_worker(cfg, data, storage, 3, device="cpu") == 3
    study = search.open_study(cfg, storage)
    assert study.study_name == "unit-search"
    remaining = cfg.search.n_trials - search.finished_trials(study)
    assert remaining == 2
    assert search.run_worker(cfg, data, storage, remaining, device="cpu") == 2
    study = search.open_study(cfg, storage)
    assert search.finished_trials(study) == 5
    assert _states(study) == ["COMPLETE"] * 5
    assert search.run_worker(cfg, data, storage, 0) == 0
    best = search.best_trial(study)
    assert best.value == min(t.value for t in study.trials)
    assert best.user_attrs["epochs_run"] == 2
    assert set(best.user_attrs["params"]) >= {"tasks.y0_value.weight", "train.lr"}
    rows = search.top_trials(study, k=3)
    assert [r["val_objective"] for r in rows] == sorted(t.value for t in study.trials)[:3]


class _Recorder:
    def __init__(self, events, number):
        self.events, self.number = events, number

    def log_epoch(self, log):
        self.events.append((self.number, "epoch", log.epoch))

    def finish(self, state, metrics, reason):
        self.events.append((self.number, state, reason))


def test_failing_trial_is_recorded_and_the_study_goes_on(tiny_synthetic, storage, monkeypatch):
    cfg = tiny_synthetic(*STUDY)
    data = prepare(cfg.data)
    calls = []
    real_train = search.train_from_config

    def flaky_train(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in trial 1")
        return real_train(*args, **kw)

    monkeypatch.setattr(search, "train_from_config", flaky_train)
    events = []
    ran = search.run_worker(
        cfg,
        data,
        storage,
        3,
        device="cpu",
        logger_factory=lambda number, params: _Recorder(events, number),
    )
    study = search.open_study(cfg, storage)
    assert ran == 3
    assert _states(study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[1].user_attrs["fail_reason"] == "RuntimeError: boom in trial 1"
    assert search.finished_trials(study) == 3
    assert search.best_trial(study).number in (0, 2)
    assert (1, "FAILED", "RuntimeError: boom in trial 1") in events
    assert (0, "COMPLETE", None) in events and (2, "COMPLETE", None) in events
    assert [e for e in events if e[0] == 0 and e[1] == "epoch"] == [
        (0, "epoch", 1),
        (0, "epoch", 2),
    ]


def test_best_trial_of_an_all_failed_study_names_the_reason(tiny_synthetic, storage):
    # Plain SGD at lr >= 1e6 without clipping overflows in the first epoch, every trial.
    cfg = tiny_synthetic(
        *STUDY,
        "train.optimizer=sgd",
        "train.grad_clip=null",
        "search.lr={low: 1.0e6, high: 1.0e7}",
    )
    data = prepare(cfg.data)
    assert search.run_worker(cfg, data, storage, 2, device="cpu") == 2
    study = search.open_study(cfg, storage)
    assert _states(study) == ["FAIL", "FAIL"]
    assert all(t.user_attrs["fail_reason"].startswith("NonFiniteLossError") for t in study.trials)
    with pytest.raises(SearchError) as info:
        search.best_trial(study)
    msg = str(info.value)
    assert "unit-search" in msg
    assert "no trial completed (2 failed" in msg
    assert "NonFiniteLossError: loss became non-finite in epoch 1" in msg


class _DeadTracker(_Recorder):
    def finish(self, state, metrics, reason):
        raise ConnectionError("tracking server gone")


def test_a_trial_that_cannot_be_logged_keeps_its_outcome(tiny_synthetic, storage):
    cfg = tiny_synthetic(*STUDY)
    data = prepare(cfg.data)
    search.run_worker(
        cfg, data, storage, 2, device="cpu", logger_factory=lambda n, p: _DeadTracker([], n)
    )
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        assert trial.value is not None
        assert trial.user_attrs["log_error"] == "ConnectionError: tracking server gone"


# --------------------------------------------------------------------------- shared studies


def _params(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_processes_sharing_a_study_sample_different_points(tiny_synthetic, tmp_path, sampler):
    # Two processes open one study with the same seed and ask in turn, as two runs do.
    cfg = tiny_synthetic(*STUDY, f"search.sampler={sampler}")
    url = str(tmp_path / "shared.log")
    first, second = search.open_study(cfg, url), search.open_study(cfg, url)
    for _ in range(3):
        for study in (first, second):
            trial = study.ask()
            search.suggest(trial, cfg)
            study.tell(trial, 1.0)
    points = _params(search.open_study(cfg, url))
    assert len(points) == 6 and len(set(points)) == 6


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize()
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_one_process_repeats_its_points_for_a_seed(tiny_synthetic, tmp_path, sampler):
    def points(cfg, name):
        study = search.open_study(cfg, f"sqlite:///{tmp_path / name}")
        for _ in range(4):
            trial = study.ask()
            search.suggest(trial, cfg)
            study.tell(trial, float(trial.number % 3))
        return _params(study)

    cfg = tiny_synthetic(*STUDY, f"search.sampler={sampler}")
    assert points(cfg, "a.db") == points(cfg, "b.db")
    other = tiny_synthetic(*STUDY, f"search.sampler={sampler}", "search.seed=1")
    assert points(other, "c.db") != points(cfg, "d.db")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize()
def test_a_running_trial_of_another_process_counts_toward_n_trials(tiny_synthetic, storage):
    cfg = tiny_synthetic(*STUDY)  # n_trials=5
    data = prepare(cfg.data)
    assert search.run_worker(cfg, data, storage, 3, device="cpu") == 3
    # Another live process (the one that started pytest) is running a trial of the study.
    study = search.open_study(cfg, storage)
    running = study.ask()
    parent = Owner(socket.gethostname(), os.getppid())
    running.set_user_attr(search.OWNER_ATTR, parent.as_dict())
    # Asked for five, the worker runs the one trial the study lacks.
    assert search.run_worker(cfg, data, storage, 5, device="cpu") == 1
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE"] * 3 + ["RUNNING", "COMPLETE"]


def test_concurrent_workers_end_with_exactly_n_trials(tiny_synthetic, tmp_path):
    cfg = tiny_synthetic(*STUDY, "search.n_trials=4")
    data = prepare(cfg.data)
    url = str(tmp_path / "journal.log")
    search.open_study(cfg, url)
    claim = threading.Lock()
    ran = [0, 0]

    def worker(i: int) -> None:
        # Each asks for the whole study, as two runs of one experiment do.
        ran[i] = search.run_worker(cfg, data, url, 4, device="cpu", claim=lambda: claim)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    study = search.open_study(cfg, url)
    assert sum(ran) == 4
    assert _states(study) == ["COMPLETE"] * 4
    assert search.finished_trials(study) == 4


def test_stale_trials_are_closed_with_a_reason_and_do_not_count(tiny_synthetic, tmp_path):
    cfg = tiny_synthetic(*STUDY)
    study = search.open_study(cfg, str(tmp_path / "journal.log"))
    me = Owner.current()
    owners = {
        # Our pid with another start time: the process that owned it is gone, the pid reused.
        "dead": Owner(me.host, me.pid, "another-boot/1").as_dict(),
        "alive": me.as_dict(),
        "other host": Owner("elsewhere", 1).as_dict(),
        "none": None,
    }
    done = study.ask()
    study.tell(done, 0.5)
    for owner in owners.values():
        trial = study.ask()
        if owner:
            trial.set_user_attr(search.OWNER_ATTR, owner)
    # A trial that Optuna's heartbeat failed, without a reason: no outcome either.
    silent = study.ask()
    study.tell(silent, state=optuna.trial.TrialState.FAIL)

    closed = search.close_stale_trials(study, ownerless_after=timedelta(0))
    assert sorted(t.number for t in closed) == [1, 4]
    trials = search.open_study(cfg, str(tmp_path / "journal.log")).trials
    assert [t.state.name for t in trials] == [
        "COMPLETE",
        "FAIL",
        "RUNNING",
        "RUNNING",
        "FAIL",
        "FAIL",
    ]
    assert trials[1].user_attrs["fail_reason"] == (
        f"stale: process {me.pid} on host {me.host} ended without finishing the trial"
    )
    assert trials[4].user_attrs["fail_reason"].startswith("stale: no owner recorded")
    assert search.finished_trials(study) == 1
    assert search.close_stale_trials(study, ownerless_after=timedelta(0)) == []


def test_a_silent_heartbeat_closes_a_trial_of_another_host(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat is experimental and meant for optimize()
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1
        )
        study = optuna.create_study(storage=storage, study_name="hb")
        trial = study.ask()
    trial.set_user_attr(search.OWNER_ATTR, Owner("elsewhere", 1).as_dict())
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    (closed,) = search.close_stale_trials(study)
    assert closed.state.name == "FAIL"
    assert closed.user_attrs["fail_reason"] == (
        "stale: no heartbeat from process 1 on host elsewhere for over 1 s"
    )
    assert search.finished_trials(study) == 0


class _Stopped(BaseException):
    """Like Prefect's TerminationSignal: not an Exception, so Optuna does not close the trial."""

    signal = 15


@pytest.mark.parametrize("stop", [KeyboardInterrupt, _Stopped])
def test_an_interrupted_trial_is_closed_and_does_not_count(
    tiny_synthetic, storage, monkeypatch, stop
):
    cfg = tiny_synthetic(*STUDY)
    data = prepare(cfg.data)
    real_train = search.train_from_config
    calls = []

    def stopped_in_trial_1(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise stop()
        return real_train(*args, **kw)

    monkeypatch.setattr(search, "train_from_config", stopped_in_trial_1)
    events = []
    with pytest.raises(stop):
        search.run_worker(
            cfg, data, storage, 3, device="cpu", logger_factory=lambda n, p: _Recorder(events, n)
        )
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE", "FAIL"]
    reason = "interrupted by SIGINT" if stop is KeyboardInterrupt else "interrupted by SIGTERM"
    assert study.trials[1].user_attrs["fail_reason"] == reason
    assert (1, "INTERRUPTED", reason) in events
    assert search.finished_trials(study) == 1
    # The next worker runs the trials the study still lacks.
    monkeypatch.setattr(search, "train_from_config", real_train)
    assert search.run_worker(cfg, data, storage, 5, device="cpu") == 4
    assert search.finished_trials(search.open_study(cfg, storage)) == 5


def _live_other_owner() -> dict:
    """The process that started pytest: alive, and not us."""
    return Owner(socket.gethostname(), os.getppid()).as_dict()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize()
@pytest.mark.parametrize("population", [1, 2])
def test_a_worker_until_full_waits_for_others_then_redoes_a_dead_ones_trial(
    tiny_synthetic, tmp_path, monkeypatch, population
):
    cfg = tiny_synthetic(*STUDY, "search.n_trials=3", f"search.population={population}")
    data = prepare(cfg.data)
    url = str(tmp_path / "journal.log")
    assert search.run_worker(cfg, data, url, 2, device="cpu") == 2
    study = search.open_study(cfg, url)
    other = study.ask()  # another worker's trial: it claims the last of the three
    other.set_user_attr(search.OWNER_ATTR, _live_other_owner())
    other.set_user_attr("prefect.flow_run_id", "w-1")
    # Without until_full a worker finds nothing to claim and returns at once.
    assert search.run_worker(cfg, data, url, 3, device="cpu") == 0

    monkeypatch.setattr(search, "POLL_S", 0.05)
    dies = threading.Timer(  # that worker's flow run crashes, as the pipeline then finds
        1.0,
        lambda: search.close_labelled_trials(
            search.open_study(cfg, url),
            "prefect.flow_run_id",
            "w-1",
            "trial worker flow run 'w-1' ended CRASHED",
        ),
    )
    dies.start()
    t0 = time.monotonic()
    ran = search.run_worker(
        cfg, data, url, 3, device="cpu", until_full=True, labels={"prefect.flow_run_id": "w-2"}
    )
    dies.join()
    assert ran == 1 and time.monotonic() - t0 >= 1.0  # it waited, then ran the trial again
    study = search.open_study(cfg, url)
    assert _states(study) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[2].user_attrs["fail_reason"] == "trial worker flow run 'w-1' ended CRASHED"
    assert study.trials[3].user_attrs["prefect.flow_run_id"] == "w-2"
    assert search.finished_trials(study) == 3


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_worker_until_full_returns_when_the_others_fill_the_study(
    tiny_synthetic, tmp_path, monkeypatch
):
    cfg = tiny_synthetic(*STUDY, "search.n_trials=2")
    data = prepare(cfg.data)
    url = str(tmp_path / "journal.log")
    assert search.run_worker(cfg, data, url, 1, device="cpu") == 1
    study = search.open_study(cfg, url)
    other = study.ask()
    other.set_user_attr(search.OWNER_ATTR, _live_other_owner())
    monkeypatch.setattr(search, "POLL_S", 0.05)
    finishes = threading.Timer(0.5, lambda: study.tell(other, 0.5))
    finishes.start()
    assert search.run_worker(cfg, data, url, 2, device="cpu", until_full=True) == 0
    finishes.join()
    assert search.finished_trials(search.open_study(cfg, url)) == 2


def test_close_labelled_trials_closes_only_that_workers_running_trials(tiny_synthetic, tmp_path):
    cfg = tiny_synthetic(*STUDY)
    study = search.open_study(cfg, str(tmp_path / "journal.log"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine, theirs, done = study.ask(), study.ask(), study.ask()
    for trial, run in ((mine, "a"), (theirs, "b"), (done, "a")):
        trial.set_user_attr("prefect.flow_run_id", run)
    study.tell(done, 0.1)
    (closed,) = search.close_labelled_trials(study, "prefect.flow_run_id", "a", "gone")
    assert closed.number == mine.number and closed.state.name == "FAIL"
    assert closed.user_attrs["fail_reason"] == "gone" and "interrupted" in closed.user_attrs
    assert _states(study) == ["FAIL", "RUNNING", "COMPLETE"]
    assert search.finished_trials(study) == 1
