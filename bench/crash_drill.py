"""Crash drill: one of two trial workers killed at a random point, again and again.

On the real stack (:mod:`bench.stack`), each repetition starts a pool-mode run of the
pipeline deployment (2 trial workers, ``n_trials`` trials of a few seconds), waits
until both worker flow runs are running, sleeps a random time (uniform up to about
the search's length) and SIGKILLs the process of one worker, chosen at random:
during its start, while it claims or trains a trial, or while it logs. Every
repetition must end with the study holding exactly ``n_trials`` trials that ran to
an outcome, the run COMPLETED, and no MLflow run of the experiment left RUNNING.
The report lists, per repetition, when the kill landed and what was closed.

``--smoke`` does not start the stack (that takes minutes) and says so in its report.
Repetitions go on until ``--repeats`` kills landed while the worker ran (a kill drawn
after the worker ended does not count), at most twice that many repetitions.
Run ``python -m bench.crash_drill [--smoke] [--out DIR] [--repeats 10]``.
"""

from __future__ import annotations

import os
import random
import signal
import time

from bench.common import Report, fmt, parse_args, quiet_optuna

N_TRIALS = 6
CONFIG = {
    "data": {
        "source": "synthetic",
        "synthetic": {"n_rows": 600, "dim": 10, "correlation": 0.8, "binarize": ["y1"]},
        "tasks": [
            {"name": "reg", "column": "y0", "type": "regression"},
            {"name": "cls", "column": "y1", "type": "binary"},
        ],
    },
    "model": {"hidden": [16]},
    "train": {"epochs": 80, "batch_size": 64, "patience": None, "device": "cpu"},
    "search": {"n_trials": N_TRIALS, "pruner": "none", "worker_threads": 1},
    "baselines": False,
    "tracking": {"experiment": "bench-crash"},
}


def _extra(parser) -> None:
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="kills that must land while the worker runs (default 10); a repetition whose kill "
        "came after the worker ended does not count, up to twice as many repetitions in all",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument(
        "--max-delay", type=float, default=20.0, help="latest kill, s after both run (20)"
    )


def workers_of(env: dict, run_id: str) -> list[dict]:
    """The trial-worker flow runs started by the pipeline run ``run_id``."""
    from bench.stack import api

    runs = api(
        env, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["mtl-trial-worker"]}}}
    )
    mine = []
    for run in runs:
        if run.get("parent_task_run_id"):
            task = api(env, "GET", f"/task_runs/{run['parent_task_run_id']}")
            if task["flow_run_id"] == run_id:
                mine.append(run)
    return mine


def phase(url: str, name: str, worker_id: str, pid: int | None) -> str:
    """What the worker was doing, from the study: training a trial, or not in one.

    Its trials carry its flow run as a label, or (before the label is written) its pid.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return "before the study existed"
    mine = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("prefect.flow_run_id") == worker_id
        or t.user_attrs.get("owner", {}).get("pid") == str(pid)
    ]
    running = [t for t in mine if t.state.name == "RUNNING"]
    if running:
        epochs = len(running[0].intermediate_values)
        return f"in trial {running[0].number} (epoch {epochs}), after {len(mine) - 1} trial(s)"
    return f"outside a trial, after {len(mine)} trial(s)"


def repetition(env: dict, deployment: str, rng: random.Random, i: int, max_delay: float) -> dict:
    """One run with one worker killed; returns what was checked."""
    import optuna
    from mlflow import MlflowClient

    from bench.stack import api, wait_for_final
    from mtl_core.integrations import search

    name = f"bench-crash-{i}-{int(time.time())}"
    body = {
        "name": name,
        "parameters": {"params": {"experiment": name, "n_workers": 2, "executor": "pool"}},
    }
    run_id = api(env, "POST", f"/deployments/{deployment}/create_flow_run", body)["id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        workers = workers_of(env, run_id)
        running = [w for w in workers if w["state_type"] == "RUNNING" and w["infrastructure_pid"]]
        if len(running) == 2:
            break
        time.sleep(0.5)
    else:
        raise TimeoutError(f"{name}: the two trial workers did not start")
    delay = rng.uniform(0, max_delay)
    time.sleep(delay)
    victim = rng.choice(running)
    state = api(env, "GET", f"/flow_runs/{victim['id']}")["state_type"]
    killed = state == "RUNNING"
    pid = int(str(victim["infrastructure_pid"]).rsplit(":", 1)[-1])
    if killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            killed = False
    # Read at once: the dead worker's trials do not change any more (until one is closed).
    landed = phase(env["MTL_OPTUNA_STORAGE"], name, victim["id"], pid)
    if not killed:
        landed = f"too late: the worker had ended ({state})"
    t_kill = time.monotonic()
    final = wait_for_final(env, run_id, timeout=900)
    study = optuna.load_study(study_name=name, storage=env["MTL_OPTUNA_STORAGE"])
    trials = study.get_trials(deepcopy=False)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    closed = [r for r in runs if "mtl.closed_reason" in r.data.tags]
    ended = workers_of(env, run_id)
    after = {w["id"]: w["state_type"] for w in ended}
    messages = [final["state"]["message"]] + [
        f"{w['name']}: {w['state']['message']}" for w in ended if w["state_type"] == "FAILED"
    ]
    return {
        "repeat": i,
        "delay_s": delay,
        "landed": landed,
        "killed": killed,
        "run": final["state_type"],
        "finished_trials": search.finished_trials(study),
        "trials": len(trials),
        "running_trials": sum(t.state.name == "RUNNING" for t in trials),
        "running_mlflow_runs": sum(r.info.status == "RUNNING" for r in runs),
        "closed_mlflow_runs": len(closed),
        "workers": sorted(after.values()),
        "recovery_s": time.monotonic() - t_kill,
        "messages": [m for m in messages if m],
        "ok": final["state_type"] == "COMPLETED"
        and search.finished_trials(study) == N_TRIALS
        and not any(r.info.status == "RUNNING" for r in runs)
        and not any(t.state.name == "RUNNING" for t in trials),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra)
    quiet_optuna()
    report = Report(
        "crash_drill",
        "Crash drill: one of two trial workers killed at a random point",
        "bench.crash_drill",
        args.out,
        args.smoke,
    )
    if args.smoke:
        report.add(
            "Smoke run: skipped. The drill needs the real stack (PostgreSQL, the Prefect "
            "server and a process worker, the MLflow server) and a few minutes per kill; "
            "the full run (`python -m bench.crash_drill`) starts its own. The same kill, "
            "once, is a server test (`tests/integration/servers/test_pool.py`)."
        )
        report.table(["repetitions", "status"], [[args.repeats, "skipped (smoke)"]])
        report.results = {"skipped": "needs the real stack"}
        report.write()
        return
    from bench.stack import bundled_config, deploy, local_stack

    rng = random.Random(args.seed)
    rows = []
    stack = local_stack(logs="crash_drill")
    with bundled_config("bench-crash", CONFIG) as config, stack as env:
        os.environ.update(env)
        deployment = deploy(env, config, "bench-crash")
        while sum(r["killed"] for r in rows) < args.repeats and len(rows) < 2 * args.repeats:
            rows.append(repetition(env, deployment, rng, len(rows), args.max_delay))
            print(rows[-1], flush=True)
    report.add(
        f"Pool-mode runs of {N_TRIALS} trials (80 epochs of 600 synthetic rows, a few seconds "
        f"each) on 2 trial workers, until {args.repeats} kills landed while the worker ran; in "
        f"each, one worker's process is SIGKILLed 0-{args.max_delay:.0f} s after both started "
        f"(seed {args.seed}). A repetition whose worker had already ended is kept in the table "
        f"and does not count as a kill. Checked: the run COMPLETED, exactly {N_TRIALS} trials "
        "that ran to an outcome, no trial and no MLflow run left RUNNING."
    )
    report.table(
        [
            "#",
            "kill after s",
            "the kill landed",
            "run",
            "trials counted / in study",
            "MLflow runs closed / left RUNNING",
            "worker runs",
            "kill to run's end s",
            "ok",
        ],
        [
            [
                r["repeat"],
                fmt(r["delay_s"], 1),
                r["landed"],
                r["run"],
                f"{r['finished_trials']} / {r['trials']}",
                f"{r['closed_mlflow_runs']} / {r['running_mlflow_runs']}",
                ", ".join(r["workers"]),
                fmt(r["recovery_s"], 0),
                "yes" if r["ok"] else "**no**",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if not r["ok"]:
            report.add(f"Repetition {r['repeat']}: " + " / ".join(r["messages"]))
    kills = sum(r["killed"] for r in rows)
    ok = sum(r["ok"] for r in rows)
    report.add(
        f"**{ok} of {len(rows)}** repetitions passed every check ({kills} kills landed while "
        "the worker ran)."
    )
    report.results = {"repeats": rows, "passed": ok, "kills": kills}
    report.write()


if __name__ == "__main__":
    main()
