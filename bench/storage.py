"""Storage under load: many worker processes fill one Optuna study in PostgreSQL.

W worker processes (forked from one that has imported the search, so they start at
once and share its pages) each open the study with ``search.open_study`` (the
server pool of ``search.open_storage``: at most two connections a process) and run
``search.run_trials`` (the claim loop of every search worker: stale trials closed,
the study's count checked and the trial created under a claim lock, owner stamped,
Optuna's heartbeat on) with a cheap objective that sleeps about ``--objective-ms``,
until the study holds ``--trials`` trials. The claim lock is a file lock here (the
workers share this machine); across machines it is a Prefect global concurrency
limit, which costs an HTTP round trip per claim on top.

Measured: trials per second (first worker start to last worker end), the peak of
connections to the study's database (``pg_stat_activity``, sampled every 0.1 s),
the time the claim lock is held per trial, and the counts of errors (exceptions in
workers, failed trials), duplicates (trial numbers reported by two workers, or
trials beyond the target) and lost trials (short of the target, or left RUNNING).

Without ``--storage`` the full run starts its own PostgreSQL (``infra/local/up
postgres`` on a free port, stopped at the end). ``--smoke`` runs 4 workers on a
journal file, without PostgreSQL: it checks the harness and the counts, not the
database figures.

Run ``python -m bench.storage [--smoke] [--out DIR] [--workers 32] [--trials 2000]``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

from bench.common import Report, fmt, parse_args, quiet_optuna

DEFAULTS = {"workers": 32, "trials": 2000, "objective_ms": 50.0}
SMOKE = {"workers": 4, "trials": 40, "objective_ms": 10.0}


def _extra(parser) -> None:
    parser.add_argument("--workers", type=int, help="worker processes (default 32; smoke 4)")
    parser.add_argument("--trials", type=int, help="trials the study should hold (default 2000)")
    parser.add_argument("--objective-ms", type=float, help="sleep of the objective (default 50)")
    parser.add_argument("--storage", help="an existing PostgreSQL URL instead of starting one")


def config(trials: int):
    """The study's experiment: random sampling, no pruning (the objective trains nothing)."""
    from mtl_core.config import load_config

    return load_config(
        "default",
        [
            f"search.n_trials={trials}",
            "search.sampler=random",
            "search.pruner=none",
            f"search.study_name=bench-storage-{os.getpid()}-{int(time.time())}",
        ],
    )


def worker(cfg, url: str, lock_path: str, objective_s: float, barrier, queue) -> None:
    """One worker process: open the study, wait for the others, claim and run trials."""
    from filelock import FileLock

    from mtl_core.integrations import search

    quiet_optuna()
    numbers: list[int] = []
    held: list[float] = []
    error, t0 = None, time.time()
    lock = FileLock(lock_path)

    @contextmanager
    def claim():
        with lock:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                held.append(time.perf_counter() - t0)

    def objective(trial, started) -> float:
        started(trial)
        x = trial.suggest_float("x", 0.0, 1.0)
        time.sleep(objective_s)
        return x

    try:
        study = search.open_study(cfg, url)
        barrier.wait()
        t0 = time.time()
        search.run_trials(
            study,
            objective,
            cfg.search.n_trials,
            cfg.search.n_trials,
            progress=lambda study, trial: numbers.append(trial.number),
            claim=claim,
            until_full=True,
        )
    except Exception as exc:  # counted, not raised: the benchmark reports errors
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    queue.put({"start": t0, "end": time.time(), "numbers": numbers, "held": held, "error": error})


def sample_connections(url: str, stop: threading.Event, peak: dict) -> None:
    """Peak of connections to the study's database (other than this one), every 0.1 s."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    query = sqlalchemy.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with engine.connect() as conn:
        while not stop.is_set():
            peak["max"] = max(peak.get("max", 0), conn.execute(query).scalar())
            time.sleep(0.1)
    engine.dispose()


def run(url: str, workers: int, trials: int, objective_ms: float, folder: Path) -> dict:
    """Fill one study with ``workers`` processes; returns the measurements."""
    from mtl_core.integrations import search

    cfg = config(trials)
    search.open_study(cfg, url)  # created once, before the workers
    ctx = mp.get_context("fork")  # the children share the imported search; no torch work here
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    args = (cfg, url, str(folder / "claim.lock"), objective_ms / 1000, barrier, queue)
    procs = [ctx.Process(target=worker, args=args) for _ in range(workers)]
    for p in procs:
        p.start()  # before any thread of this process starts: they wait at the barrier
    stop, peak = threading.Event(), {}
    sampler = None
    if search.is_server_storage(url):
        sampler = threading.Thread(target=sample_connections, args=(url, stop, peak))
        sampler.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    stop.set()
    if sampler:
        sampler.join()
    study = search.open_study(cfg, url)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    reported = [n for r in results for n in r["numbers"]]
    done = search.finished_trials(study)
    errors = [r["error"] for r in results if r["error"]] + [
        f"trial failed: {t.user_attrs.get('fail_reason')}"
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "FAIL"
    ]
    complete = {t.number for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
    duplicates = (len(reported) - len(set(reported))) + max(0, done - trials)
    lost = max(0, trials - done) + states.count("RUNNING") + len(set(reported) - complete)
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    held = [h for r in results for h in r["held"]]
    claims = len(held)
    return {
        "storage": "PostgreSQL" if search.is_server_storage(url) else "journal file",
        "workers": workers,
        "target": trials,
        "objective_ms": objective_ms,
        "trials": done,
        "trials_in_study": len(states),
        "seconds": end - start,
        "trials_per_s": done / (end - start),
        "per_worker_trials_per_s": done / (end - start) / workers,
        "connection_peak": peak.get("max"),
        "claims": claims,
        "claim_held_ms": 1000 * sum(held) / claims if claims else None,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "duplicates": duplicates,
        "lost": lost,
    }


def predict(result: dict, workers: int) -> dict:
    """What the measured run predicts for ``workers`` workers on one database.

    Trials are claimed one at a time, so the claim lock's hold time caps the rate at
    ``1000 / claim_held_ms`` trials/s whatever the number of workers; below that cap
    each worker adds ``1 / (objective + its own overhead)``. Connections grow with
    the peak per worker.
    """
    per_worker = result["per_worker_trials_per_s"]
    cap = 1000 / result["claim_held_ms"] if result["claim_held_ms"] else float("inf")
    per_conn = (result["connection_peak"] or 0) / result["workers"]
    return {
        "workers": workers,
        "wanted_trials_per_s": per_worker * workers,
        "claim_cap_trials_per_s": cap,
        "trials_per_s": min(per_worker * workers, cap),
        "connections": per_conn * workers if result["connection_peak"] else None,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra)
    quiet_optuna()
    sizes = dict(SMOKE if args.smoke else DEFAULTS)
    for key in sizes:
        if getattr(args, key, None):
            sizes[key] = getattr(args, key)
    report = Report(
        "storage",
        "Storage under load: worker processes on one Optuna study",
        "bench.storage",
        args.out,
        args.smoke,
    )
    with tempfile.TemporaryDirectory(prefix="mtl-bench-storage-") as tmp:
        folder = Path(tmp)
        if args.storage:
            stack, url = nullcontext({}), args.storage
        elif args.smoke:
            stack, url = nullcontext({}), str(folder / "study.log")
        else:
            from bench.stack import local_stack

            stack, url = local_stack("postgres"), None
        with stack as env:
            url = url or env["MTL_OPTUNA_STORAGE"]
            result = run(url, sizes["workers"], sizes["trials"], sizes["objective_ms"], folder)
    report.add(
        f"{sizes['workers']} worker processes on one machine, one study in a "
        f"{result['storage']}, an objective that sleeps {sizes['objective_ms']:.0f} ms, random "
        f"sampling; target {sizes['trials']:,} trials. Claim lock: a file lock (across "
        "machines a Prefect global concurrency limit)."
        + (
            " Smoke run: a journal file, no PostgreSQL, so no connection figures."
            if result["storage"] != "PostgreSQL"
            else ""
        )
    )
    report.table(
        ["measure", "value"],
        [
            ["trials that ran to an outcome", f"{result['trials']:,} of {result['target']:,}"],
            ["trials in the study", f"{result['trials_in_study']:,}"],
            ["wall seconds", fmt(result["seconds"], 1)],
            ["trials/s", fmt(result["trials_per_s"], 1)],
            ["trials/s per worker", fmt(result["per_worker_trials_per_s"], 2)],
            ["connection peak (pg_stat_activity)", fmt(result["connection_peak"])],
            ["claim lock held per trial, ms", fmt(result["claim_held_ms"], 2)],
            ["errors", result["errors"]],
            ["duplicates", result["duplicates"]],
            ["lost trials", result["lost"]],
        ],
    )
    exact = result["trials"] == result["target"] and not result["duplicates"] and not result["lost"]
    ok = exact and not result["errors"]
    report.add(
        f"Target: exactly {result['target']:,} trials, zero duplicates, zero errors: "
        f"**{'met' if ok else 'missed'}**."
        + (f" Errors: {'; '.join(result['error_examples'])}." if result["errors"] else "")
    )
    big = predict(result, 500)
    if result["connection_peak"]:
        report.add(
            "**What this predicts for 500 workers.** Claims are serialised: at "
            f"{result['claim_held_ms']:.1f} ms held per trial the study takes at most "
            f"~{big['claim_cap_trials_per_s']:.0f} trials/s, however many workers; 500 workers "
            f"would want ~{big['wanted_trials_per_s']:.0f} trials/s at this objective, so they "
            f"get ~{big['trials_per_s']:.0f} (objectives of a few seconds, as real trials are, "
            f"keep them well under the cap). Connections: {result['connection_peak']} for "
            f"{result['workers']} workers is ~{result['connection_peak'] / result['workers']:.1f} "
            f"a worker, so ~{big['connections']:.0f} for 500: over PostgreSQL's default "
            "max_connections (100). Put PgBouncer (transaction pooling) in front, or Optuna's "
            "gRPC storage proxy, so that many workers share a few server connections."
        )
    report.results = {**result, "predicted_500": big, "target_met": ok}
    report.write()


if __name__ == "__main__":
    main()
