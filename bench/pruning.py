"""Pruning: epochs trained with and without the median pruner at the same trial budget.

The search of ``configs/default.yaml`` (TPE, its trial budget, its median pruner settings and
early stopping) runs twice per seed through ``mtl_core.search.run_worker``: once with the
median pruner and once with ``search.pruner=none``. Reported: epochs actually trained over
all trials (pruned trials count the epochs they ran), the best validation objective each
reached, and the wall time.

Run ``python -m bench.pruning [--smoke] [--out DIR]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import Report, Timer, fmt, mean_std, met, parse_args, plt, quiet_optuna
from mtl_core import search
from mtl_core.config import load_config
from mtl_core.data import prepare

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


def run(cfg, data, pruner: str, seed: int, tmp: Path) -> dict:
    """One study; epochs trained, best objective, trial states and seconds."""
    raw = cfg.model_dump()
    raw["search"].update(pruner=pruner, seed=seed, study_name=f"prune-{pruner}-{seed}")
    raw["train"]["seed"] = seed
    scfg = type(cfg).model_validate(raw)
    url = f"sqlite:///{tmp / f'{pruner}-{seed}.db'}"
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
        "curve": [len(tr.intermediate_values) for tr in sorted(trials, key=lambda x: x.number)],
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    quiet_optuna()
    seeds, overrides = settings(args.smoke)
    cfg = load_config("default", overrides)
    data = prepare(cfg.data)
    report = Report(
        "pruning",
        "Pruning: epochs trained with and without the median pruner",
        "bench.pruning",
        args.out,
        args.smoke,
    )
    s = cfg.search
    report.add(
        f"`configs/default.yaml`{' with `' + ' '.join(overrides) + '`' if overrides else ''}: "
        f"{s.n_trials} trials per study, TPE sampler, up to {cfg.train.epochs} epochs per trial "
        f"with early stopping (patience {cfg.train.patience}); median pruner after "
        f"{s.pruner_startup_trials} trials and {s.pruner_warmup_epochs} warm-up epochs. "
        f"Seeds {seeds}; {THREADS} torch thread."
    )
    rows, per_seed = [], []
    with tempfile.TemporaryDirectory(prefix="mtl-bench-pruning-") as tmp:
        for seed in seeds:
            on = run(cfg, data, "median", seed, Path(tmp))
            off = run(cfg, data, "none", seed, Path(tmp))
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
                ]
            )
            print(rows[-1], flush=True)
    saving = 1 - sum(r["median"]["epochs"] for r in per_seed) / sum(
        r["none"]["epochs"] for r in per_seed
    )
    gap_mean, _ = mean_std([r["gap"] for r in per_seed])
    worst_gap = max(r["gap"] for r in per_seed)
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
        ],
        rows,
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
        "Summary",
    )
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5.5, 3.2))
    for r in per_seed:
        for arm, style in (("median", "-"), ("none", "--")):
            curve = r[arm]["curve"]
            cum = [sum(curve[: i + 1]) for i in range(len(curve))]
            label = "median pruner" if arm == "median" else "no pruner"
            ax.plot(range(1, len(cum) + 1), cum, style, label=f"seed {r['seed']}, {label}")
    ax.set(xlabel="trial", ylabel="epochs trained (cumulative)", title="Epochs spent by the search")
    ax.legend(fontsize=6)
    report.figure(fig, "pruning", "cumulative epochs trained per trial, with and without pruning")
    report.results = {
        "per_seed": per_seed,
        "saving": saving,
        "gap_mean": gap_mean,
        "worst_gap": worst_gap,
        "target_saving": TARGET_SAVING,
        "target_gap": TARGET_GAP,
        "plots": report.results.get("plots", []),
    }
    report.write()


if __name__ == "__main__":
    main()
