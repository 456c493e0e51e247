"""Pruning: epochs trained with and without the median pruner at the same trial budget.

The search of ``configs/default.yaml`` (TPE, its trial budget, its median pruner settings and
early stopping) runs twice per seed through ``mtl_core.integrations.search.run_worker``: once
with the median pruner and once with ``search.pruner=none``; then both again with early
stopping off.
Reported: epochs actually trained over all trials (pruned trials count the epochs they ran),
the best validation objective each reached, the wall time, and the time spent in Optuna's
``Trial.report`` / ``should_prune`` calls.

Run ``python -m bench.pruning [--smoke] [--out DIR]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import Report, Timer, fmt, mean_std, met, parse_args, plt, quiet_optuna
from mtl_core.config import load_config
from mtl_core.data import prepare
from mtl_core.integrations import search

TARGET_SAVING = 0.40  # at least 40% fewer epochs
TARGET_GAP = 0.01  # best objective within 1%
THREADS = 1


def settings(smoke: bool) -> tuple[list[int], list[str]]:
    """Seeds and config overrides."""
    if smoke:
        return [0, 1], [
            "data.synthetic.n_rows=600",
            "train.epochs=8",
            "search.n_trials=6",
            "search.pruner_startup_trials=2",
            "search.pruner_warmup_epochs=2",
        ]
    return [0, 1, 2], []


# Variants: the config as users get it (early stopping on), and without early stopping, where
# every unpruned trial trains all its epochs and the pruner alone cuts them short.
VARIANTS = {"default": [], "early stopping off": ["train.patience=null"]}
REPORT_SECONDS = [0.0]  # time inside Trial.report + Trial.should_prune (storage round trips)


def time_optuna_reports() -> None:
    """Accumulate the seconds spent in ``Trial.report`` and ``Trial.should_prune``."""
    import optuna

    for name in ("report", "should_prune"):
        fn = getattr(optuna.trial.Trial, name)

        def wrapper(self, *a, _fn=fn, **kw):
            t0 = time.perf_counter()
            try:
                return _fn(self, *a, **kw)
            finally:
                REPORT_SECONDS[0] += time.perf_counter() - t0

        setattr(optuna.trial.Trial, name, wrapper)


def run(cfg, data, pruner: str, seed: int, tmp: Path) -> dict:
    """One study; epochs trained, best objective, trial states and seconds."""
    raw = cfg.model_dump()
    name = f"prune-{pruner}-{seed}-{cfg.train.patience}"
    raw["search"].update(pruner=pruner, seed=seed, study_name=name)
    raw["train"]["seed"] = seed
    scfg = type(cfg).model_validate(raw)
    url = f"sqlite:///{tmp / name}.db"
    REPORT_SECONDS[0] = 0.0
    with Timer() as t:
        search.run_worker(scfg, data, url, scfg.search.n_trials, device="cpu")
    study = search.open_study(scfg, url)
    trials = study.get_trials(deepcopy=False)
    return {
        "epochs": sum(len(tr.intermediate_values) for tr in trials),
        "best": study.best_value,
        "trials": len(trials),
        "pruned": sum(tr.state.name == "PRUNED" for tr in trials),
        "seconds": t.seconds,
        "report_seconds": REPORT_SECONDS[0],
        "curve": [len(tr.intermediate_values) for tr in sorted(trials, key=lambda x: x.number)],
    }


def run_variant(report: Report, cfg, data, seeds: list[int], label: str, tmp: Path) -> dict:
    """Both arms for every seed, a per-seed table and the summary numbers of one variant."""
    rows, per_seed = [], []
    for seed in seeds:
        on = run(cfg, data, "median", seed, tmp)
        off = run(cfg, data, "none", seed, tmp)
        saving = 1 - on["epochs"] / off["epochs"]
        gap = (on["best"] - off["best"]) / abs(off["best"])
        per_seed.append({"seed": seed, "median": on, "none": off, "saving": saving, "gap": gap})
        rows.append(
            [
                seed,
                on["epochs"],
                off["epochs"],
                f"{100 * saving:.1f}%",
                f"{on['pruned']}/{on['trials']}",
                fmt(on["best"]),
                fmt(off["best"]),
                f"{100 * gap:+.2f}%",
                fmt(on["seconds"], 1),
                fmt(off["seconds"], 1),
                f"{fmt(on['report_seconds'], 1)} / {fmt(off['report_seconds'], 1)}",
            ]
        )
        print(label, rows[-1], flush=True)
    saving = 1 - sum(r["median"]["epochs"] for r in per_seed) / sum(
        r["none"]["epochs"] for r in per_seed
    )
    gap_mean, _ = mean_std([r["gap"] for r in per_seed])
    worst_gap = max(r["gap"] for r in per_seed)
    patience = cfg.train.patience
    report.table(
        [
            "seed",
            "epochs (median pruner)",
            "epochs (no pruner)",
            "fewer epochs",
            "pruned trials",
            "best val objective (pruner)",
            "best (no pruner)",
            "gap",
            "seconds (pruner)",
            "seconds (no pruner)",
            "seconds in report + should_prune (pruner / none)",
        ],
        rows,
        f"{label}: up to {cfg.train.epochs} epochs per trial, early stopping "
        + (f"patience {patience}" if patience else "off"),
    )
    report.table(
        ["measure", "value", "target", ""],
        [
            [
                "epochs saved, all seeds together",
                f"**{100 * saving:.1f}%**",
                f"≥ {100 * TARGET_SAVING:.0f}%",
                met(saving, TARGET_SAVING),
            ],
            [
                "best-objective gap, mean over seeds (positive = pruner worse)",
                f"**{100 * gap_mean:+.2f}%**",
                f"≤ {100 * TARGET_GAP:.0f}%",
                met(gap_mean, TARGET_GAP, higher_is_better=False),
            ],
            ["best-objective gap, worst seed", f"{100 * worst_gap:+.2f}%", "", ""],
        ],
        f"{label}: summary",
    )
    return {
        "per_seed": per_seed,
        "saving": saving,
        "gap_mean": gap_mean,
        "worst_gap": worst_gap,
        "patience": patience,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    quiet_optuna()
    time_optuna_reports()
    seeds, overrides = settings(args.smoke)
    base = load_config("default", overrides)
    data = prepare(base.data, base.features)
    report = Report(
        "pruning",
        "Pruning: epochs trained with and without the median pruner",
        "bench.pruning",
        args.out,
        args.smoke,
    )
    s = base.search
    report.add(
        f"`configs/default.yaml`{' with `' + ' '.join(overrides) + '`' if overrides else ''}: "
        f"{s.n_trials} trials per study, TPE sampler; median pruner after "
        f"{s.pruner_startup_trials} trials and {s.pruner_warmup_epochs} warm-up epochs. "
        f"Seeds {seeds}; {THREADS} torch thread. Two variants: the config as it is (early "
        "stopping on), and with early stopping off, where the pruner alone shortens trials."
    )
    variants = {}
    with tempfile.TemporaryDirectory(prefix="mtl-bench-pruning-") as tmp:
        for label, extra in VARIANTS.items():
            cfg = load_config("default", overrides + extra)
            variants[label] = run_variant(report, cfg, data, seeds, label, Path(tmp))
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(variants), figsize=(5 * len(variants), 3.2), sharey=True)
    for ax, (label, v) in zip(axes, variants.items(), strict=True):
        for r in v["per_seed"]:
            for arm, style in (("median", "-"), ("none", "--")):
                curve = r[arm]["curve"]
                cum = [sum(curve[: i + 1]) for i in range(len(curve))]
                name = "median pruner" if arm == "median" else "no pruner"
                ax.plot(range(1, len(cum) + 1), cum, style, label=f"seed {r['seed']}, {name}")
        ax.set(xlabel="trial", title=f"Epochs spent by the search ({label})")
    axes[0].set_ylabel("epochs trained (cumulative)")
    axes[0].legend(fontsize=6)
    report.figure(fig, "pruning", "cumulative epochs trained per trial, with and without pruning")
    head = variants["default"]
    report.results = {
        **{k: head[k] for k in ("per_seed", "saving", "gap_mean", "worst_gap")},
        "variants": variants,
        "target_saving": TARGET_SAVING,
        "target_gap": TARGET_GAP,
        "plots": report.results.get("plots", []),
    }
    report.write()


if __name__ == "__main__":
    main()
