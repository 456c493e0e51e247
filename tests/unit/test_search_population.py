"""Batched search: ask-and-tell in batches, exact trial counts, pruning, failures, and k-fold CV."""

from __future__ import annotations

import statistics

import optuna
import pytest

from mtl_core.data import prepare
from mtl_core.errors import SearchError
from mtl_core.integrations import search

STUDY = [
    "search.n_trials=5",
    "search.sampler=random",
    "search.pruner=none",
    "search.trial_epochs=2",
    "search.population=2",
    "tracking.experiment=unit-batches",
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


class _Recorder:
    def __init__(self, events, number):
        self.events, self.number = events, number

    def log_epoch(self, log):
        self.events.append((self.number, "epoch", log.epoch))

    def finish(self, state, metrics, reason):
        self.events.append((self.number, state, reason, metrics))


def _batch_sizes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = search.run_batch

    def spy(cfg, study, n, *args, **kw):
        sizes.append(n)
        return real(cfg, study, n, *args, **kw)

    monkeypatch.setattr(search, "run_batch", spy)
    return sizes


def test_batches_never_overshoot_and_a_resumed_study_reaches_n_trials(
    tiny_synthetic, storage, monkeypatch
):
    cfg = tiny_synthetic(*STUDY)
    data = prepare(cfg.data)
    sizes = _batch_sizes(monkeypatch)
    assert search.run_worker(cfg, data, storage, 3, device="cpu") == 3
    assert sizes == [2, 1]
    study = search.open_study(cfg, storage)
    remaining = cfg.search.n_trials - search.finished_trials(study)
    assert search.run_worker(cfg, data, storage, remaining, device="cpu") == 2
    assert sizes == [2, 1, 2]
    study = search.open_study(cfg, storage)
    assert search.finished_trials(study) == 5
    assert _states(study) == ["COMPLETE"] * 5
    best = search.best_trial(study)
    assert best.user_attrs["epochs_run"] == 2
    assert set(best.user_attrs["params"]) >= {"tasks.y0_value.weight", "train.lr"}
    # Raising n_trials later resumes the same study to the new total, exactly.
    more = tiny_synthetic(*STUDY, "search.n_trials=8")
    remaining = more.search.n_trials - search.finished_trials(search.open_study(more, storage))
    assert search.run_worker(more, data, storage, remaining, device="cpu") == 3
    assert search.finished_trials(search.open_study(more, storage)) == 8


def test_an_interrupted_batch_leaves_no_trial_running(tiny_synthetic, storage, monkeypatch):
    cfg = tiny_synthetic(*STUDY)
    data = prepare(cfg.data)
    real, calls = search.train_population, []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped by hand")
        return real(*args, **kw)

    monkeypatch.setattr(search, "train_population", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search.run_worker(cfg, data, storage, 5, device="cpu")
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    for t in study.trials[2:]:
        assert t.user_attrs["fail_reason"] == "interrupted by SIGINT"
        assert t.user_attrs["interrupted"] == "interrupted by SIGINT"
    # As in the sequential search, an interrupted trial has no outcome and does not count;
    # resuming runs the rest and the study holds exactly n_trials that ran to an outcome.
    monkeypatch.setattr(search, "train_population", real)
    remaining = cfg.search.n_trials - search.finished_trials(study)
    assert remaining == 3
    assert search.run_worker(cfg, data, storage, remaining, device="cpu") == 3
    assert search.finished_trials(search.open_study(cfg, storage)) == 5


def test_failed_trials_are_recorded_and_the_batch_goes_on(tiny_synthetic, storage, monkeypatch):
    cfg = tiny_synthetic(*STUDY, "search.n_trials=3", "search.population=3")
    data = prepare(cfg.data)
    real, calls = search.apply_params, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in trial 1")
        return real(*args)

    monkeypatch.setattr(search, "apply_params", flaky)
    events = []
    ran = search.run_worker(
        cfg, data, storage, 3, device="cpu", logger_factory=lambda n, p: _Recorder(events, n)
    )
    study = search.open_study(cfg, storage)
    assert ran == 3
    assert _states(study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[1].user_attrs["fail_reason"] == "RuntimeError: boom in trial 1"
    assert (1, "FAILED", "RuntimeError: boom in trial 1", {}) in events
    assert [e[:3] for e in events if e[0] == 0] == [
        (0, "epoch", 1),
        (0, "epoch", 2),
        (0, "COMPLETE", None),
    ]


def test_diverging_trials_fail_with_their_reason(tiny_synthetic, storage):
    cfg = tiny_synthetic(
        *STUDY,
        "search.n_trials=2",
        "train.optimizer=sgd",
        "train.grad_clip=null",
        "search.lr={low: 1.0e6, high: 1.0e7}",
    )
    data = prepare(cfg.data)
    assert search.run_worker(cfg, data, storage, 2, device="cpu") == 2
    study = search.open_study(cfg, storage)
    assert _states(study) == ["FAIL", "FAIL"]
    assert all(t.user_attrs["fail_reason"].startswith("NonFiniteLossError") for t in study.trials)
    with pytest.raises(SearchError, match="no trial completed"):
        search.best_trial(study)


class _PruneOdd(optuna.pruners.BasePruner):
    """Prunes odd-numbered trials at epoch 2."""

    def prune(self, study, trial):
        return trial.number % 2 == 1 and trial.last_step == 2


def _batched_study(cfg, storage, pruner):
    return optuna.create_study(
        storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=pruner,
        study_name=f"prune-{type(pruner).__name__}",
    )


def test_pruned_trials_stop_and_leave_the_others_unaffected(tiny_synthetic, storage):
    cfg = tiny_synthetic(*STUDY, "search.trial_epochs=4", "train.patience=null")
    data = prepare(cfg.data)
    events = []
    pruned = _batched_study(cfg, storage, _PruneOdd())
    ran = search.run_batches(
        cfg, data, pruned, 4, device="cpu", logger_factory=lambda n, p: _Recorder(events, n)
    )
    assert ran == 4
    assert _states(pruned) == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    for n in (1, 3):
        assert [e[2] for e in events if e[0] == n and e[1] == "epoch"] == [1, 2]
        assert (n, "PRUNED", "pruned at epoch 2", {}) in events
        assert pruned.trials[n].intermediate_values.keys() == {1, 2}
    for n in (0, 2):
        assert [e[2] for e in events if e[0] == n and e[1] == "epoch"] == [1, 2, 3, 4]
    unpruned = _batched_study(cfg, storage, optuna.pruners.NopPruner())
    search.run_batches(cfg, data, unpruned, 4, device="cpu")
    for n in (0, 2):
        assert pruned.trials[n].params == unpruned.trials[n].params
        assert pruned.trials[n].value == pytest.approx(unpruned.trials[n].value, rel=1e-6)


def test_the_median_pruner_reads_completed_trials_once_per_epoch(storage, monkeypatch):
    # One epoch's reports of a batch share one read of the completed trials, and each
    # trial gets the verdict Optuna's own should_prune gives.
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study = optuna.create_study(
        storage=storage, pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    )
    for value in (0.2, 0.4):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": value}, distributions=dist, value=value, intermediate_values={1: value}
            )
        )
    trials = [study.ask(dist) for _ in range(4)]
    for trial, value in zip(trials, (0.1, 0.25, 0.35, 0.9), strict=True):
        trial.report(value, 1)
    expected = [t.should_prune() for t in trials]
    assert expected == [False, False, True, True]  # the median of 0.2 and 0.4 is 0.3
    reads = []
    real = study.get_trials

    def spy(*args, **kw):
        reads.append(kw.get("states"))
        return real(*args, **kw)

    monkeypatch.setattr(study, "get_trials", spy)
    view = search._PrunerView(study)
    assert [view.should_prune(t) for t in trials] == expected
    assert len(reads) == 1


def test_a_trial_that_cannot_be_logged_keeps_its_outcome(tiny_synthetic, storage):
    class Dead(_Recorder):
        def finish(self, state, metrics, reason):
            raise ConnectionError("tracking server gone")

    cfg = tiny_synthetic(*STUDY)
    search.run_worker(
        cfg, prepare(cfg.data), storage, 2, device="cpu", logger_factory=lambda n, p: Dead([], n)
    )
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE", "COMPLETE"]
    assert all(
        t.user_attrs["log_error"] == "ConnectionError: tracking server gone" for t in study.trials
    )


def test_a_failing_logger_factory_ends_its_batch_early(tiny_synthetic, storage):
    # A tracking server that is down fails one trial, not the whole batch of K.
    cfg = tiny_synthetic(*STUDY, "search.n_trials=4", "search.population=3")

    def factory(number, params):
        if number == 1:
            raise ConnectionError("tracking server gone")
        return _Recorder([], number)

    ran = search.run_worker(
        cfg, prepare(cfg.data), storage, 4, device="cpu", logger_factory=factory
    )
    study = search.open_study(cfg, storage)
    assert ran == 4
    assert _states(study) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["fail_reason"] == "ConnectionError: tracking server gone"


def test_study_stop_in_a_callback_ends_the_search_after_the_batch(tiny_synthetic, storage):
    cfg = tiny_synthetic(*STUDY)
    data = prepare(cfg.data)
    seen = []

    def progress(study, trial):
        seen.append((trial.number, search.finished_trials(study)))
        study.stop()

    assert search.run_worker(cfg, data, storage, 5, device="cpu", progress=progress) == 2
    assert seen == [(0, 2), (1, 2)]


# --------------------------------------------------------------------------- cross-validation


class _NoTestSplit:
    """Stands in for the test split; any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")


def test_cv_trial_value_is_the_mean_of_its_logged_folds(tiny_synthetic, storage):
    cfg = tiny_synthetic(*STUDY, "search.n_trials=3", "search.cv_folds=3")
    data = prepare(cfg.data)
    data.splits["test"] = _NoTestSplit()
    events = []
    assert (
        search.run_worker(
            cfg, data, storage, 3, device="cpu", logger_factory=lambda n, p: _Recorder(events, n)
        )
        == 3
    )
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE"] * 3
    for trial in study.trials:
        (metrics,) = [e[3] for e in events if e[0] == trial.number and e[1] == "COMPLETE"]
        folds = [metrics[f"val/fold_objective/{j}"] for j in range(3)]
        assert len(set(folds)) == 3
        assert trial.value == pytest.approx(statistics.fmean(folds))
        assert metrics["val/best_objective"] == pytest.approx(trial.value)
        assert metrics["val/fold_std"] == pytest.approx(statistics.stdev(folds))
        assert trial.user_attrs["fold_objectives"] == pytest.approx(folds)
        assert "val/y1_positive/auc" in metrics  # the fold-mean of the usual val metrics
        epochs = [e[2] for e in events if e[0] == trial.number and e[1] == "epoch"]
        assert epochs == [1, 2]


def test_batches_wait_for_the_pruner_to_start_up(tiny_synthetic, storage, monkeypatch):
    # The median pruner needs 3 completed trials: the first batch holds just those, so the
    # batches after it can be pruned; without a pruner the first batch is full.
    median = [*STUDY, "search.pruner=median", "search.pruner_startup_trials=3"]
    cfg = tiny_synthetic(*median, "search.population=4", "search.n_trials=9")
    sizes = _batch_sizes(monkeypatch)
    assert search.run_worker(cfg, prepare(cfg.data), storage, 9, device="cpu") == 9
    assert sizes == [3, 4, 2]
    cfg = tiny_synthetic(*STUDY, "search.population=4", "search.n_trials=9")
    other = storage.replace("o.db", "p.db")
    assert search.run_worker(cfg, prepare(cfg.data), other, 9, device="cpu") == 9
    assert sizes == [3, 4, 2, 4, 4, 1]


OPEN = [
    "search.width=[8, 16, 32]",
    "search.depth=[1, 2]",
    "search.batch_size=[32, 64]",
    "search.numeric=[standard, quantile]",
    "search.dropout={low: 0.05, high: 0.3, log: false}",
]


def _groups(monkeypatch) -> list[list[list[int]]]:
    """The batchable groups of each batch, as train_population formed them."""
    from mtl_core import population

    seen: list[list[list[int]]] = []
    real = population.group_members

    def spy(members, **kw):
        groups, singles = real(members, **kw)
        seen.append([*groups, *([i] for i in singles)])
        return groups, singles

    monkeypatch.setattr(population, "group_members", spy)
    return seen


@pytest.mark.parametrize("mode", ["shared", "per_trial"])
def test_open_choices_are_shared_within_a_batch(tiny_synthetic, storage, monkeypatch, mode):
    cfg = tiny_synthetic(
        *STUDY,
        *OPEN,
        "search.population=4",
        "search.n_trials=8",
        f"search.population_choices={mode}",
    )
    groups = _groups(monkeypatch)
    assert search.run_worker(cfg, prepare(cfg.data), storage, 8, device="cpu") == 8
    study = search.open_study(cfg, storage)
    assert _states(study) == ["COMPLETE"] * 8  # no WAITING trial is left behind
    trials = sorted(study.trials, key=lambda t: t.number)
    batches = [trials[:4], trials[4:]]
    choices = ["width", "depth", "batch_size", "numeric"]
    picks = [{tuple(t.params[c] for c in choices) for t in batch} for batch in batches]
    if mode == "shared":
        # One set of choices per batch, and one batched model per batch.
        assert [len(p) for p in picks] == [1, 1]
        assert groups == [[[0, 1, 2, 3]], [[0, 1, 2, 3]]]
        for t in trials[1:4]:  # the choices came from the first trial; the ranges did not
            assert t.system_attrs["fixed_params"] == {c: trials[0].params[c] for c in choices}
            assert t.params["lr"] != trials[0].params["lr"]
            assert t.params["dropout"] != trials[0].params["dropout"]
        assert trials[0].params != trials[4].params
    else:
        assert all(len(p) > 1 for p in picks)
        assert all(len(g) > 1 for g in groups)  # trials of several shapes: several groups
        assert not any("fixed_params" in t.system_attrs for t in trials)


def test_population_and_cv_folds_are_validated(tiny_synthetic):
    from mtl_core.errors import ConfigError

    assert tiny_synthetic().search.population == 1 and tiny_synthetic().search.cv_folds == 1
    with pytest.raises(ConfigError, match=r"search\.population"):
        tiny_synthetic("search.population=0")
    with pytest.raises(ConfigError, match=r"search\.cv_folds"):
        tiny_synthetic("search.cv_folds=0")
    assert tiny_synthetic().search.population_choices == "shared"
    with pytest.raises(ConfigError, match=r"search\.population_choices.*'shared' or 'per_trial'"):
        tiny_synthetic("search.population_choices=some")
