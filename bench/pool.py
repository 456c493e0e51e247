"""Scale-out: a pool-mode search with 1 and 2 trial workers against the local executor.

On the real stack (``infra/local/up`` in a folder of its own, see :mod:`bench.stack`),
the benchmark's config is deployed with ``mtl deploy`` and four runs of the pipeline
deployment are started through the REST API, one at a time: the local executor
(search workers are processes of the run) and the pool executor (search workers are
``mtl-trial-worker`` flow runs the process worker picks up), each with 1 and 2
workers. Every worker trains with one torch thread (``OMP_NUM_THREADS=1`` for the
run, ``search.worker_threads=1`` for trial workers), trials train a fixed number of
epochs (no pruner, no early stopping), and no baselines are trained.

Two rates per run, both trials / seconds:

- **search step**: from the end of the run's ``start-parent-run`` task to the start
  of its ``train-final`` task: everything the search costs, starting the workers
  (processes or flow runs) included;
- **trials only**: from the first trial's start to the last trial's end in the study.

Targets: 2 pool workers at least 1.7x one pool worker, and the pool executor at most
10 % slower than the local executor at equal workers (search step). Starting a trial
worker (the Prefect worker's poll, a new process importing torch, MLflow and Prefect,
the data from Prefect's cache) is a fixed cost of some seconds, shown as "outside
trials"; it weighs less the more trials a worker runs, hence 48 trials a run.

``--smoke`` does not start the stack (that takes minutes) and says so in its report.
Run ``python -m bench.pool [--smoke] [--out DIR] [--trials N]``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from bench.common import Report, fmt, met, parse_args, quiet_optuna

TARGET_SPEEDUP, TARGET_COST = 1.7, 0.10
# Trials of about 5 s on one thread.
CONFIG = {
    "data": {
        "source": "synthetic",
        "synthetic": {"n_rows": 8000, "dim": 100, "correlation": 0.9, "binarize": ["y1"]},
        "tasks": [
            {"name": "reg", "column": "y0", "type": "regression"},
            {"name": "cls", "column": "y1", "type": "binary"},
        ],
    },
    "train": {"epochs": 40, "patience": None, "device": "cpu"},
    "search": {"pruner": "none", "worker_threads": 1},
    "baselines": False,
    "tracking": {"experiment": "bench-pool"},
}


def _extra(parser) -> None:
    parser.add_argument("--trials", type=int, default=48, help="trials per run (default 48)")


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def search_seconds(env: dict, run_id: str) -> float:
    """Seconds from the end of ``start-parent-run`` to the start of ``train-final``."""
    from bench.stack import api

    tasks = api(
        env, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200}
    )
    ends = {t["name"].rsplit("-", 1)[0]: t for t in tasks}
    return _time(ends["train-final"]["start_time"]) - _time(ends["start-parent-run"]["end_time"])


def study_window(url: str, name: str) -> tuple[int, float, float]:
    """Trials that ran to an outcome, first start to last end (s), and mean trial seconds."""
    import optuna

    from mtl_core.integrations import search

    study = optuna.load_study(study_name=name, storage=url)
    trials = [t for t in study.get_trials(deepcopy=False) if search.ran_to_an_outcome(t)]
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    mean = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials) / len(
        trials
    )
    return len(trials), (end - start).total_seconds(), mean


def run_one(env: dict, deployment: str, executor: str, workers: int, trials: int) -> dict:
    """One run of the deployment; returns its rates."""
    from bench.stack import api, wait_for_final

    name = f"bench-pool-{executor}-{workers}-{int(time.time())}"
    body = {
        "name": name,
        "parameters": {
            "params": {
                "experiment": name,
                "n_trials": trials,
                "n_workers": workers,
                "executor": executor,
            }
        },
        "job_variables": {"env": {"OMP_NUM_THREADS": "1"}},
    }
    run_id = api(env, "POST", f"/deployments/{deployment}/create_flow_run", body)["id"]
    run = wait_for_final(env, run_id, timeout=3600)
    if run["state_type"] != "COMPLETED":
        raise RuntimeError(f"run {name} ended {run['state_type']}: {run['state']['message']}")
    done, window, mean = study_window(env["MTL_OPTUNA_STORAGE"], name)
    step = search_seconds(env, run_id)
    return {
        "executor": executor,
        "workers": workers,
        "trials": done,
        "search_s": step,
        "search_trials_per_s": done / step,
        "window_s": window,
        "window_trials_per_s": done / window,
        "trial_s": mean,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra)
    quiet_optuna()
    report = Report(
        "pool",
        "Scale-out: pool-mode search with 1 and 2 trial workers vs the local executor",
        "bench.pool",
        args.out,
        args.smoke,
    )
    if args.smoke:
        report.add(
            "Smoke run: skipped. This benchmark needs the real stack (PostgreSQL, the Prefect "
            "server and a process worker, the MLflow server), which takes minutes to start and "
            "run; the full run (`python -m bench.pool`) starts its own."
        )
        report.table(["run", "status"], [["local and pool, 1 and 2 workers", "skipped (smoke)"]])
        report.results = {"skipped": "needs the real stack"}
        report.write()
        return
    from bench.stack import bundled_config, deploy, local_stack

    rows = []
    stack = local_stack(logs="pool")
    with bundled_config("bench-pool", CONFIG) as config, stack as env:
        os.environ.update(env)  # the study is read from the stack's PostgreSQL
        deployment = deploy(env, config, "bench-pool")
        for executor in ("local", "pool"):
            for workers in (1, 2):
                rows.append(run_one(env, deployment, executor, workers, args.trials))
                print(rows[-1], flush=True)
    by = {(r["executor"], r["workers"]): r for r in rows}
    speedup = by["pool", 2]["search_trials_per_s"] / by["pool", 1]["search_trials_per_s"]
    cost = {
        n: by["local", n]["search_trials_per_s"] / by["pool", n]["search_trials_per_s"] - 1
        for n in (1, 2)
    }
    report.add(
        f"`{CONFIG['data']['synthetic']['n_rows']:,}` synthetic rows, "
        f"{CONFIG['train']['epochs']} epochs a trial (no pruning, no early stopping), "
        f"{args.trials} trials a run, one torch thread per worker, no baselines; the real "
        "stack on this machine, one process worker."
    )
    report.table(
        [
            "executor",
            "workers",
            "trials",
            "search step s",
            "trials/s (search step)",
            "trials only s",
            "trials/s (trials only)",
            "outside trials s",
            "mean trial s",
        ],
        [
            [
                r["executor"],
                r["workers"],
                r["trials"],
                fmt(r["search_s"], 1),
                fmt(r["search_trials_per_s"], 3),
                fmt(r["window_s"], 1),
                fmt(r["window_trials_per_s"], 3),
                fmt(r["search_s"] - r["window_s"], 1),
                fmt(r["trial_s"], 2),
            ]
            for r in rows
        ],
    )
    report.add(
        f"2 pool workers over 1: **{speedup:.2f}x** (target ≥ {TARGET_SPEEDUP}x: "
        f"**{met(speedup, TARGET_SPEEDUP)}**). What the pool costs over the local executor, "
        f"search step: 1 worker **{100 * cost[1]:+.1f}%**, 2 workers **{100 * cost[2]:+.1f}%** "
        f"(target ≤ {100 * TARGET_COST:.0f}%: "
        f"**{met(max(cost.values()), TARGET_COST, higher_is_better=False)}**)."
    )
    report.results = {
        "runs": rows,
        "speedup": speedup,
        "cost": {str(n): c for n, c in cost.items()},
        "targets": {"speedup": TARGET_SPEEDUP, "cost": TARGET_COST},
    }
    report.write()


if __name__ == "__main__":
    main()
