"""Parallel trials: two worker processes on one journal-file study against one worker.

Each worker is a separate process (spawned) that prepares the data, waits at a barrier with
the others, then runs its share of the trials with ``mtl_core.integrations.search.run_worker``
against a shared Optuna journal file (``search.resolve_storage`` / ``open_storage`` with a
``*.log`` path). Every worker, on both sides, uses ``torch.set_num_threads(1)``, so that two
workers do not fight over the 2 cores with 2 threads each and the comparison is of processes
alone.
Trials train a fixed number of epochs (no pruner, no early stopping), so each costs the same.
Trial throughput = trials / (last worker's end - first worker's start).

Run ``python -m bench.parallel [--smoke] [--out DIR]``.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from bench.common import Report, fmt, met, parse_args, quiet_optuna
from mtl_core.config import ExperimentConfig, load_config

TARGET_SPEEDUP = 1.7


def settings(smoke: bool) -> tuple[int, list[str]]:
    """Trial count and config overrides (trials of about 1.5 s each in the full run)."""
    trials, rows, epochs = (4, 1000, 3) if smoke else (12, 20000, 20)
    return trials, [
        f"data.synthetic.n_rows={rows}",
        f"train.epochs={epochs}",
        "train.patience=null",
        "search.pruner=none",
        f"search.n_trials={trials}",
        "train.device=cpu",
    ]


def worker(raw: dict, url: str, n_trials: int, barrier, queue) -> None:
    """One search worker process: prepare, wait for the others, run ``n_trials`` trials."""
    import torch

    from mtl_core.data import prepare
    from mtl_core.integrations import search

    torch.set_num_threads(1)
    quiet_optuna()
    cfg = ExperimentConfig.model_validate(raw)
    data = prepare(cfg.data, cfg.features)
    barrier.wait()
    t0, cpu0 = time.time(), time.process_time()  # wall clock: comparable across processes
    ran = search.run_worker(cfg, data, url, n_trials, device="cpu", torch_threads=1)
    queue.put((t0, time.time(), ran, time.process_time() - cpu0))


def run(cfg: ExperimentConfig, n_workers: int, folder: Path) -> dict:
    """Trials per second of ``n_workers`` processes on a fresh journal-file study."""
    from mtl_core.integrations import search

    raw = cfg.model_dump()
    raw["search"].update(
        storage=str(folder / f"study-{n_workers}.log"),
        n_workers=n_workers,
        study_name=f"parallel-{n_workers}",
    )
    cfg = ExperimentConfig.model_validate(raw)
    url = search.resolve_storage(cfg.search, n_workers)
    study = search.open_study(cfg, url)  # created once, before the workers start
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n_workers), ctx.Queue()
    shares = search.split_trials(cfg.search.n_trials, n_workers)
    procs = [
        ctx.Process(target=worker, args=(cfg.model_dump(), url, n, barrier, queue)) for n in shares
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"worker exited with {p.exitcode}")
    start, end = min(r[0] for r in results), max(r[1] for r in results)
    study = search.open_study(cfg, url)
    done = search.finished_trials(study)
    cpu = sum(r[3] for r in results)
    return {
        "workers": n_workers,
        "trials": done,
        "seconds": end - start,
        "trials_per_s": done / (end - start),
        "cpu_seconds": cpu,
        "cores_obtained": cpu / (end - start),
        "cpu_s_per_trial": cpu / done,
        "storage": Path(url).name,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quiet_optuna()
    trials, overrides = settings(args.smoke)
    cfg = load_config("default", overrides)
    report = Report(
        "parallel",
        "Parallel trials: 2 worker processes vs 1 on a journal-file study",
        "bench.parallel",
        args.out,
        args.smoke,
    )
    report.add(
        f"`configs/default.yaml` with `{' '.join(overrides)}`: {trials} trials of "
        f"{cfg.train.epochs} epochs each, TPE sampler; one shared Optuna journal file per run; "
        "torch.set_num_threads(1) in every worker on both sides."
    )
    with tempfile.TemporaryDirectory(prefix="mtl-bench-parallel-") as tmp:
        one = run(cfg, 1, Path(tmp))
        two = run(cfg, 2, Path(tmp))
    speedup = two["trials_per_s"] / one["trials_per_s"]
    report.table(
        [
            "workers",
            "trials finished",
            "wall seconds",
            "trials/s",
            "worker CPU seconds",
            "cores obtained (CPU s / wall s)",
            "CPU s per trial",
        ],
        [
            [
                r["workers"],
                r["trials"],
                fmt(r["seconds"], 2),
                fmt(r["trials_per_s"], 3),
                fmt(r["cpu_seconds"], 1),
                fmt(r["cores_obtained"], 2),
                fmt(r["cpu_s_per_trial"], 2),
            ]
            for r in (one, two)
        ],
    )
    report.add(
        f"Speed-up of 2 workers over 1: **{speedup:.2f}x**; target ≥ {TARGET_SPEEDUP}x: "
        f"**{met(speedup, TARGET_SPEEDUP)}**. CPU seconds per trial compare the work "
        "done per trial on each side whatever else ran on the machine; cores obtained "
        "shows how much of the 2 cores the workers actually got."
    )
    report.results = {"one": one, "two": two, "speedup": speedup, "target": TARGET_SPEEDUP}
    report.write()


if __name__ == "__main__":
    main()
