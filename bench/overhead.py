"""Orchestration overhead: the full ``mtl-pipeline`` flow against a bare loop over ``fit``.

(a) ``flows.pipeline.mtl_pipeline`` on embedded defaults in a fresh ``MTL_STATE_DIR``
(ephemeral Prefect API, SQLite MLflow store, SQLite Optuna study): data preparation, a fixed
number of trials (TPE sampler, no pruner, no early stopping, so every trial trains the same
epochs), retraining the best, evaluation, figures, model registration and promotion.
Single-task baselines are off (``baselines=false``).

(b) A bare Python loop doing the same training: prepare the data, ``fit`` + validation
``evaluate`` for exactly the params the flow's trials used (read back from its study), then
retrain the best and evaluate on val and test. No Prefect, MLflow or Optuna at run time.
It runs twice after the flow and the two are averaged.

Prefect's start-up (the first flow run, which starts the ephemeral API) is timed separately
with a trivial flow and excluded; so are the imports. The MLflow store's creation is inside
(a); it is also timed on a throw-away store and shown. MLflow logging cost per trial is
measured inside (a) by timing every ``MlflowTrialLogger`` call against the trial's duration;
Optuna's per-epoch ``Trial.report``/``should_prune`` calls are timed the same way.

Run ``python -m bench.overhead [--smoke] [--out DIR]``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.common import Report, Timer, fmt, met, parse_args

TARGET_RATIO = 1.15
THREADS = 1


def settings(smoke: bool) -> tuple[int, list[str]]:
    """Trials and config overrides: trials of about 5 s each here (full), or tiny (smoke)."""
    # 20 trials: the search budget of configs/default.yaml, what `make run` does.
    trials, rows, epochs = (2, 1500, 3) if smoke else (20, 30000, 30)
    return trials, [
        f"data.synthetic.n_rows={rows}",
        f"train.epochs={epochs}",
        "train.patience=null",
        "search.pruner=none",
        f"search.n_trials={trials}",
        "baselines=false",
        "tracking.experiment=bench-overhead",
        "train.device=cpu",
    ]


def fresh_state() -> Path:
    """A new state folder, set before ``flows`` is imported; servers in the shell are ignored."""
    root = Path(tempfile.mkdtemp(prefix="mtl-bench-overhead-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the studies, runs and models
    os.environ["MTL_STATE_DIR"] = str(root / "state")
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MTL_OPTUNA_STORAGE", "PREFECT_HOME"):
        os.environ.pop(var, None)
    return root


def patch_trial_logger(timings: dict[int, float]) -> None:
    """Accumulate the seconds spent in each trial's MlflowTrialLogger calls, by trial number."""
    from mtl_core.integrations import tracking

    cls = tracking.MlflowTrialLogger
    init, log_epoch, finish = cls.__init__, cls.log_epoch, cls.finish

    def timed(fn, key_of):
        def wrapper(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **kw)
            finally:
                timings[key_of(self, a, kw)] += time.perf_counter() - t0

        return wrapper

    def trial_of_init(self, a, kw):
        self._bench_trial = kw.get("trial_number", a[3] if len(a) > 3 else -1)
        return self._bench_trial

    cls.__init__ = timed(init, trial_of_init)
    cls.log_epoch = timed(log_epoch, lambda self, a, kw: self._bench_trial)
    cls.finish = timed(finish, lambda self, a, kw: self._bench_trial)


def patch_optuna_reports(timings: dict[int, float]) -> None:
    """Accumulate the seconds each trial spends in ``Trial.report`` and ``should_prune``.

    With an RDB storage every ``report`` is a committed write of the epoch's value.
    """
    import optuna

    cls = optuna.trial.Trial
    for name in ("report", "should_prune"):
        fn = getattr(cls, name)

        def wrapper(self, *a, _fn=fn, **kw):
            t0 = time.perf_counter()
            try:
                return _fn(self, *a, **kw)
            finally:
                timings[self.number] += time.perf_counter() - t0

        setattr(cls, name, wrapper)


def bare_loop(cfg, trial_params: list[dict]) -> tuple[dict[int, float], float]:
    """Same data, trials, final retrain and evaluation as the flow, as plain function calls."""
    from mtl_core.data import prepare
    from mtl_core.integrations.search import apply_params
    from mtl_core.metrics import evaluate
    from mtl_core.train import train_from_config

    data = prepare(cfg.data, cfg.features)
    seconds, objectives = {}, {}

    def train(params: dict, splits: tuple[str, ...], epochs: int | None):
        tcfg = apply_params(cfg, params)
        tdata = data.with_features(tcfg.features)
        model, result = train_from_config(tcfg, tdata, epochs=epochs)
        evaluate(model, tdata, splits)
        return result.best_val_objective

    for i, params in enumerate(trial_params):
        with Timer() as t:
            objectives[i] = train(params, ("val",), cfg.search.trial_epochs)
        seconds[i] = t.seconds
    best = min(objectives, key=objectives.get)
    with Timer() as t:
        train(trial_params[best], ("val", "test"), None)
    return seconds, t.seconds


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    root = fresh_state()
    with Timer() as t_import:
        import torch
        from prefect import flow

        import flows  # noqa: F401  (embedded defaults for the fresh state folder)
        from flows.params import PipelineParams
        from flows.pipeline import mtl_pipeline
        from mtl_core.config import load_config
        from mtl_core.integrations import search, tracking
    torch.set_num_threads(THREADS)
    n_trials, overrides = settings(args.smoke)
    cfg = load_config("default", overrides)
    report = Report(
        "overhead",
        "Orchestration overhead: Prefect + MLflow + Optuna vs a bare loop",
        "bench.overhead",
        args.out,
        args.smoke,
    )

    # Warm-up, so that first-call costs of torch hit neither side.
    warm = load_config("default", ["data.synthetic.n_rows=300", "train.epochs=2"])
    bare_loop(warm, [{}])

    @flow(name="bench-noop")
    def noop() -> int:
        return 1

    with Timer() as t_prefect:
        noop()  # the first flow run starts the ephemeral Prefect API
    with Timer() as t_second:
        noop()
    # MLflow store creation (schema migrations of a new SQLite file), on a throw-away store.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'throwaway-mlflow.db'}"
    with Timer() as t_mlflow:
        tracking.get_client().search_experiments()
    del os.environ["MLFLOW_TRACKING_URI"]

    logger_s: dict[int, float] = defaultdict(float)
    optuna_s: dict[int, float] = defaultdict(float)
    patch_trial_logger(logger_s)
    patch_optuna_reports(optuna_s)
    params = PipelineParams(config="default", overrides=overrides)
    with Timer() as t_flow:
        result = mtl_pipeline(params)
    study = search.open_study(cfg, search.resolve_storage(cfg.search))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    flow_trial_s = {
        t.number: (t.datetime_complete - t.datetime_start).total_seconds() for t in trials
    }
    trial_params = [t.user_attrs["params"] for t in trials]
    bare_runs = []
    for _ in range(2):  # twice, and averaged: load from other users drifts during a run
        with Timer() as t_bare:
            trial_s, final_s = bare_loop(cfg, trial_params)
        bare_runs.append({"total": t_bare.seconds, "trials": trial_s, "final": final_s})
    bare_s = sum(r["total"] for r in bare_runs) / len(bare_runs)
    bare_trial_s = {
        n: sum(r["trials"][n] for r in bare_runs) / len(bare_runs) for n in flow_trial_s
    }

    ratio = t_flow.seconds / bare_s
    ratio_no_mlflow_init = (t_flow.seconds - t_mlflow.seconds) / bare_s
    mean_flow_trial = sum(flow_trial_s.values()) / len(flow_trial_s)
    mean_bare_trial = sum(bare_trial_s.values()) / len(bare_trial_s)
    trial_ratio = mean_flow_trial / mean_bare_trial
    outside_flow = t_flow.seconds - sum(flow_trial_s.values())
    outside_bare = bare_s - sum(bare_trial_s.values())
    report.add(
        f"{len(trials)} trials on `configs/default.yaml` with `{' '.join(overrides)}`: every "
        f"trial trains {cfg.train.epochs} epochs (no pruning, no early stopping); "
        f"{THREADS} torch thread on both sides. Both sides include data preparation, the "
        "trials, retraining the best params and evaluating them; the flow also logs to MLflow, "
        "draws figures, registers and promotes the model. Single-task baselines are off on "
        "both sides. The flow ran once, then the bare loop twice (averaged)."
    )
    report.table(
        ["what", "seconds"],
        [
            ["imports (prefect, mlflow, optuna, torch, flows)", fmt(t_import.seconds, 2)],
            [
                "Prefect start-up: first trivial flow run (starts the ephemeral API)",
                fmt(t_prefect.seconds, 2),
            ],
            ["a second trivial flow run", fmt(t_second.seconds, 2)],
            ["MLflow: creating a new SQLite store (throw-away copy)", fmt(t_mlflow.seconds, 2)],
            ["(a) mtl-pipeline flow, start-up excluded", fmt(t_flow.seconds, 2)],
            [
                "(b) bare loop over fit, mean of 2 runs ("
                + ", ".join(fmt(r["total"], 2) for r in bare_runs)
                + ")",
                fmt(bare_s, 2),
            ],
            ["mean trial, in the flow (Optuna timestamps)", fmt(mean_flow_trial, 2)],
            ["mean trial, bare", fmt(mean_bare_trial, 2)],
            [
                "flow outside its trials (prepare, parent run, final, figures, registry)",
                fmt(outside_flow, 2),
            ],
            ["bare outside its trials (prepare, final retrain + evaluation)", fmt(outside_bare, 2)],
            [
                "of which the final retrain + evaluation, bare",
                fmt(sum(r["final"] for r in bare_runs) / len(bare_runs), 2),
            ],
        ],
        "Wall seconds",
    )
    report.table(
        ["ratio", "value", "target", ""],
        [
            [
                "flow / bare (Prefect start-up excluded)",
                f"**{ratio:.3f}**",
                f"≤ {TARGET_RATIO}",
                met(ratio, TARGET_RATIO, higher_is_better=False),
            ],
            [
                "flow / bare, MLflow store creation also excluded",
                f"{ratio_no_mlflow_init:.3f}",
                "",
                "",
            ],
            ["one trial: flow / bare", f"{trial_ratio:.3f}", "", ""],
        ],
        "Overhead ratios",
    )

    rows = []
    for n in sorted(flow_trial_s):
        extra = flow_trial_s[n] - bare_trial_s[n]
        rows.append(
            [
                n,
                fmt(flow_trial_s[n], 2),
                fmt(bare_trial_s[n], 2),
                fmt(1000 * logger_s[n], 1),
                f"{100 * logger_s[n] / flow_trial_s[n]:.2f}%",
                fmt(1000 * optuna_s[n], 1),
                fmt(1000 * (extra - logger_s[n] - optuna_s[n]), 1),
            ]
        )
    total_flow, total_logger = sum(flow_trial_s.values()), sum(logger_s.values())
    total_optuna = sum(optuna_s.values())
    mean_share = total_logger / total_flow
    rest = total_flow - sum(bare_trial_s.values()) - total_logger - total_optuna
    rows.append(
        [
            "all",
            fmt(total_flow, 2),
            fmt(sum(bare_trial_s.values()), 2),
            fmt(1000 * total_logger, 1),
            f"**{100 * mean_share:.2f}%**",
            fmt(1000 * total_optuna, 1),
            fmt(1000 * rest, 1),
        ]
    )
    report.table(
        [
            "trial",
            "flow trial s",
            "bare trial s",
            "MlflowTrialLogger ms",
            "MLflow share of trial",
            "Optuna report + should_prune ms",
            "rest of the difference ms",
        ],
        rows,
        f"Per trial: MLflow logging cost and where the flow's extra time goes "
        f"({cfg.train.epochs} epochs, so {cfg.train.epochs} reports and epochs of metrics each)",
    )
    report.results = {
        "trials": len(trials),
        "import_s": t_import.seconds,
        "prefect_startup_s": t_prefect.seconds,
        "mlflow_store_creation_s": t_mlflow.seconds,
        "flow_s": t_flow.seconds,
        "bare_s": bare_s,
        "bare_runs_s": [r["total"] for r in bare_runs],
        "ratio": ratio,
        "ratio_without_mlflow_init": ratio_no_mlflow_init,
        "trial_ratio": trial_ratio,
        "mean_flow_trial_s": mean_flow_trial,
        "mean_bare_trial_s": mean_bare_trial,
        "flow_outside_trials_s": outside_flow,
        "bare_outside_trials_s": outside_bare,
        "mlflow_share": mean_share,
        "mlflow_ms_per_trial": 1000 * total_logger / len(trials),
        "optuna_report_ms_per_trial": 1000 * total_optuna / len(trials),
        "target": TARGET_RATIO,
        "best_trial": result["best_trial"],
    }
    report.write()
    print(f"RATIO flow / bare loop (Prefect start-up excluded): {ratio:.3f}")


if __name__ == "__main__":
    main()
