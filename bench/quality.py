"""Model quality: does the tuned multi-task model beat single-task models and published numbers?

For each dataset and seed, on a fixed train/val/test split (``data.split_seed`` 0), with every
choice made on the validation split and the test split used only to report:

1. single-task models, one per task, same trunk and head; learning rate picked from a small
   log-spaced grid over the config's ``search.lr`` range by validation loss;
2. multi-task, equal weights, no penalty; learning rate from the same grid;
3. multi-task tuned by ``mtl_core.integrations.search`` (TPE + median pruner) over task weights, L1, L2 and
   learning rate, at a fixed trial budget, then retrained with the best params;
4. the same search with a random sampler and no pruner, at the same trial budget.

On UCI Adult, scikit-learn's HistGradientBoostingClassifier (one per task) is the strong
non-neural reference, and the published test AUCs of DATA.md are shown for comparison.
Δm (``mtl_core.metrics.delta_m``) is each method's relative gain over (1) of the same seed.

Run ``python -m bench.quality [--smoke] [--out DIR]``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench import adult_data
from bench.common import Report, Timer, fmt_pm, mean_std, parse_args, plt, quiet_optuna
from mtl_core.integrations import search
from mtl_core.config import ExperimentConfig, load_config
from mtl_core.data import PreparedData, prepare
from mtl_core.errors import NonFiniteLossError
from mtl_core.losses import MultiTaskLoss, build_loss
from mtl_core.metrics import delta_m, evaluate, task_metrics
from mtl_core.model import build_model
from mtl_core.train import fit

DEVICE = "cpu"
THREADS = 1  # the machine is 2 shared cores; one intra-op thread was faster and steadier here
PRIMARY = {"binary": "auc", "multiclass": "accuracy", "regression": "rmse"}
SECONDARY = {"binary": None, "multiclass": "macro_f1", "regression": "r2"}
STL, EQUAL, TPE, RANDOM, HGB = (
    "single-task (lr grid)",
    "MTL equal weights",
    "MTL tuned (TPE + median pruner)",
    "MTL random search",
    "HistGradientBoosting (single-task)",
)
# Published test AUCs (DATA.md: independent reproduction on UCI Census-Income, IJANMC 2024).
# Reference constants, not measured here; their data, split and features may differ from ours.
PUBLISHED = {
    "published single-task (IJANMC 2024)": {"income": 0.9198, "never_married": 0.9748},
    "published shared-bottom (IJANMC 2024)": {"income": 0.9148, "never_married": 0.9754},
}


# --------------------------------------------------------------------------- settings


def settings(smoke: bool, out: Path) -> dict[str, Any]:
    """Datasets (name -> config overrides), seeds, trial budget and lr grid size."""
    if smoke:
        syn = ["data.synthetic.n_rows=600", "train.epochs=6", "train.patience=3"]
        adult_csv = out / "adult_smoke.csv"
        datasets = {
            f"synthetic p={p}": ("synthetic", [*syn, f"data.synthetic.correlation={p}"])
            for p in (0.5, 0.9, 1.0)
        }
        datasets["penguins"] = ("penguins", ["train.epochs=8", "train.patience=3"])
        datasets["adult"] = (
            "adult",
            [f"data.path={adult_csv}", "train.epochs=3", "train.patience=2"],
        )
        return {
            "datasets": datasets,
            "seeds": [0, 1],
            "budget": 3,
            "grid": 2,
            "adult_rows": 2000,
            "adult_csv": adult_csv,
            "warmup": 1,
        }
    datasets = {
        f"synthetic p={p}": ("synthetic", [f"data.synthetic.correlation={p}"])
        for p in (0.5, 0.9, 1.0)
    }
    datasets["penguins"] = ("penguins", [])
    # Adult: all 48,842 rows, but 10 epochs with patience 3 instead of the config's 30/5,
    # so that the whole `make bench` stays near half an hour on 2 cores.
    datasets["adult"] = ("adult", ["train.epochs=10", "train.patience=3"])
    return {
        "datasets": datasets,
        "seeds": [0, 1, 2, 3, 4],
        "budget": 15,
        "grid": 3,
        "adult_rows": None,
        "adult_csv": None,
        "warmup": None,
    }


def lr_grid(cfg: ExperimentConfig, n: int) -> list[float]:
    """``n`` learning rates log-spaced inside the config's search range (ends excluded)."""
    rng = cfg.search.lr
    lo, hi = math.log(rng.low), math.log(rng.high)
    return [math.exp(lo + (hi - lo) * (i + 0.5) / n) for i in range(n)]


def with_seed(cfg: ExperimentConfig, seed: int, **search_fields: Any) -> ExperimentConfig:
    """A copy with the train and search seeds set and search fields replaced."""
    raw = cfg.model_dump()
    raw["train"]["seed"] = seed
    raw["search"].update(seed=seed, **search_fields)
    raw["baselines"] = False
    return ExperimentConfig.model_validate(raw)


# --------------------------------------------------------------------------- methods


def grid_fit(
    cfg: ExperimentConfig, data: PreparedData, lrs: list[float]
) -> tuple[dict[str, float], int, float]:
    """Train with equal weights (1 per task, no penalty) at each lr; keep the best on val.

    Returns:
        Val and test metrics of the chosen model, epochs trained over the grid, chosen lr.
    """
    types = {t.name: t.type for t in data.tasks}
    best, epochs = None, 0
    for lr in lrs:
        train_cfg = cfg.train.model_copy(update={"lr": lr})
        model = build_model(cfg.model, data.preprocessor.n_inputs, data.out_dims, train_cfg.seed)
        try:
            result = fit(
                model,
                data,
                MultiTaskLoss(types, dict.fromkeys(types, 1.0)),
                train_cfg,
                device=DEVICE,
            )
        except NonFiniteLossError:
            continue
        epochs += result.epochs_run
        if best is None or result.best_val_objective < best[0]:
            best = (result.best_val_objective, lr, model)
    if best is None:
        raise NonFiniteLossError(f"every learning rate of {lrs} diverged")
    return evaluate(best[2], data, ("val", "test"), DEVICE), epochs, best[1]


def single_task(cfg: ExperimentConfig, data: PreparedData, lrs: list[float]):
    """One model per task (same trunk), each with its own lr from the grid; metrics merged."""
    metrics, epochs, chosen = {}, 0, {}
    objectives: dict[str, list[float]] = {"val": [], "test": []}
    for spec in data.tasks:
        m, e, lr = grid_fit(cfg, data.only(spec.name), lrs)
        metrics.update({k: v for k, v in m.items() if not k.endswith("/objective")})
        for split in objectives:  # a one-task objective is that task's loss
            objectives[split].append(m[f"{split}/objective"])
        epochs += e
        chosen[spec.name] = lr
    # Comparable with the multi-task objective: the unweighted mean of the task losses.
    metrics.update({f"{s}/objective": float(np.mean(v)) for s, v in objectives.items()})
    return metrics, epochs, chosen


def searched(
    cfg: ExperimentConfig,
    data: PreparedData,
    sampler: str,
    pruner: str,
    budget: int,
    seed: int,
    tmp: Path,
    dataset: str,
):
    """Run ``budget`` trials through ``mtl_core.integrations.search``, retrain the best, evaluate it.

    Each study gets its own name and file: a study that exists is resumed, not restarted.
    """
    slug = "".join(c if c.isalnum() else "_" for c in dataset)
    name = f"{slug}-{sampler}-{pruner}-{seed}"
    scfg = with_seed(cfg, seed, sampler=sampler, pruner=pruner, n_trials=budget, study_name=name)
    url = f"sqlite:///{tmp / name}.db"
    search.run_worker(scfg, data, url, budget, device=DEVICE)
    study = search.open_study(scfg, url)
    best = search.best_trial(study)
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    best_cfg = search.apply_params(scfg, best.user_attrs["params"])
    model = build_model(best_cfg.model, data.preprocessor.n_inputs, data.out_dims, seed)
    loss = build_loss(best_cfg.loss, {t.name: t.type for t in data.tasks})
    result = fit(model, data, loss, best_cfg.train, device=DEVICE)
    metrics = evaluate(model, data, ("val", "test"), DEVICE)
    return metrics, epochs + result.epochs_run, {**best.user_attrs["params"], "pruned": pruned}


def _categorical_frame(rows: pd.DataFrame, categorical: list[str], cats: dict) -> pd.DataFrame:
    out = rows.copy()
    for c in categorical:
        values = out[c].astype(object).where(out[c].notna(), "<missing>").astype(str)
        values = values.where(values.isin(cats[c]))  # a level unseen in training is missing
        out[c] = pd.Categorical(values, categories=cats[c])
    return out


def gradient_boosting(data: PreparedData, seed: int) -> tuple[dict[str, float], int]:
    """HistGradientBoostingClassifier per binary task on the raw rows (native categoricals)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    pre = data.preprocessor
    train_rows = data.splits["train"].rows
    cats = {
        c: sorted(
            train_rows[c]
            .astype(object)
            .where(train_rows[c].notna(), "<missing>")
            .astype(str)
            .unique()
        )
        for c in pre.categorical
    }
    frames = {
        s: _categorical_frame(data.splits[s].rows, pre.categorical, cats)
        for s in ("train", "val", "test")
    }
    metrics, iters = {}, 0
    for spec in data.tasks:
        y = data.splits["train"].y[spec.name]
        keep = ~np.isnan(y)
        clf = HistGradientBoostingClassifier(
            max_iter=500, early_stopping=True, categorical_features="from_dtype", random_state=seed
        )
        clf.fit(frames["train"][keep], y[keep].astype(int))
        iters += clf.n_iter_
        for split in ("val", "test"):
            p = np.clip(clf.predict_proba(frames[split])[:, 1], 1e-7, 1 - 1e-7)
            scores = np.log(p / (1 - p))[:, None]  # logits, the form task_metrics expects
            for k, v in task_metrics(spec, data.splits[split].y[spec.name], scores).items():
                metrics[f"{split}/{spec.name}/{k}"] = v
    return metrics, iters


# --------------------------------------------------------------------------- running


def run_dataset(name: str, cfg: ExperimentConfig, data: PreparedData, st: dict, tmp: Path):
    """All methods over all seeds; returns {method: [per-seed record]}."""
    lrs = lr_grid(cfg, st["grid"])
    runs: dict[str, list[dict]] = {}

    def record(method: str, seed: int, metrics: dict, epochs: int, seconds: float, extra) -> None:
        runs.setdefault(method, []).append(
            {"seed": seed, "metrics": metrics, "epochs": epochs, "seconds": seconds, "extra": extra}
        )

    for seed in st["seeds"]:
        scfg = with_seed(cfg, seed)
        with Timer() as t:
            m, e, lr = single_task(scfg, data, lrs)
        record(STL, seed, m, e, t.seconds, {"lr": lr})
        with Timer() as t:
            m, e, lr = grid_fit(scfg, data, lrs)
        record(EQUAL, seed, m, e, t.seconds, {"lr": lr})
        with Timer() as t:
            m, e, p = searched(scfg, data, "tpe", "median", st["budget"], seed, tmp, name)
        record(TPE, seed, m, e, t.seconds, p)
        with Timer() as t:
            m, e, p = searched(scfg, data, "random", "none", st["budget"], seed, tmp, name)
        record(RANDOM, seed, m, e, t.seconds, p)
        if name == "adult":
            with Timer() as t:
                m, iters = gradient_boosting(data, seed)
            record(HGB, seed, m, 0, t.seconds, {"boosting_iterations": iters})
        print(f"  {name} seed {seed} done", flush=True)
    stl_by_seed = {r["seed"]: r["metrics"] for r in runs[STL]}
    for method, recs in runs.items():
        for r in recs:
            r["delta_m"] = (
                0.0
                if method == STL
                else delta_m(r["metrics"], stl_by_seed[r["seed"]], data.tasks, "test")
            )
    return runs


def dataset_table(report: Report, name: str, data: PreparedData, runs: dict, seconds: float):
    """Per-task test metrics, Δm, objective, epochs and time, mean ± std over seeds."""
    headers, keys = ["method"], []
    for spec in data.tasks:
        for metric in (PRIMARY[spec.type], SECONDARY[spec.type]):
            if metric:
                headers.append(f"{spec.name} {metric}")
                keys.append(f"test/{spec.name}/{metric}")
    headers += ["Δm % vs single-task", "test objective", "epochs trained", "seconds"]
    rows = []
    for method, recs in runs.items():
        cells = [method] + [fmt_pm([r["metrics"].get(k, float("nan")) for r in recs]) for k in keys]
        cells += [
            fmt_pm([r["delta_m"] for r in recs], 2),
            fmt_pm([r["metrics"].get("test/objective", float("nan")) for r in recs]),
            fmt_pm([r["epochs"] for r in recs], 0) if method != HGB else "–",
            fmt_pm([r["seconds"] for r in recs], 1),
        ]
        rows.append(cells)
    if name == "adult":
        for label, aucs in PUBLISHED.items():
            rows.append(
                [f"*{label}*"]
                + [(f"{aucs[k.split('/')[1]]:.4f}" if k.endswith("/auc") else "–") for k in keys]
                + ["–"] * 4
            )
    n = len(next(iter(runs.values())))
    caption = (
        f"{name}: {data.n_rows:,} rows ({len(data.splits['train'].X):,} train / "
        f"{len(data.splits['val'].X):,} val / {len(data.splits['test'].X):,} test), "
        f"test split, mean ± std over {n} seeds; {seconds:.0f} s"
    )
    report.table(headers, rows, caption)


def summary_table(report: Report, all_runs: dict) -> None:
    """Δm of every method on every dataset in one table."""
    methods = [STL, EQUAL, TPE, RANDOM]
    rows = []
    for name, runs in all_runs.items():
        rows.append(
            [name]
            + [
                fmt_pm([r["delta_m"] for r in runs[m]], 2) if m in runs else "–"
                for m in methods[1:]
            ]
        )
    report.table(
        ["dataset", *methods[1:]],
        rows,
        "Summary: Δm (%) of each multi-task method against the single-task models "
        "(test split; positive = sharing helped)",
    )
    # Who won, counted from the numbers (mean Δm over seeds).
    wins = {
        m: sum(mean_std([r["delta_m"] for r in runs[m]])[0] > 0 for runs in all_runs.values())
        for m in methods[1:]
    }
    report.add(
        "Datasets on which the method's mean Δm is positive: "
        + "; ".join(f"{m}: {wins[m]} of {len(all_runs)}" for m in methods[1:])
        + "."
    )


def params_table(report: Report, all_runs: dict) -> None:
    """What the TPE search chose: task weights, how often each penalty was on, learning rate."""
    rows = []
    for name, runs in all_runs.items():
        picks = [r["extra"] for r in runs[TPE]]
        weights = sorted({k for p in picks for k in p if k.startswith("tasks.")})
        w = ", ".join(f"{k.split('.')[1]} {fmt_pm([p[k] for p in picks], 2)}" for k in weights)
        l1_on = sum(p.get("loss.l1", 0) > 0 for p in picks)
        l2_on = sum(p.get("loss.l2", 0) > 0 for p in picks)
        lrs = [p["train.lr"] for p in picks if "train.lr" in p]
        lr = f"{math.exp(np.mean(np.log(lrs))):.2g}" if lrs else "–"
        pruned = fmt_pm([p.get("pruned", 0) for p in picks], 1)
        rows.append([name, w, f"{l1_on} of {len(picks)}", f"{l2_on} of {len(picks)}", lr, pruned])
    report.table(
        [
            "dataset",
            "task weights (mean ± std; they sum to the task count)",
            "L1 on",
            "L2 on",
            "lr (geometric mean)",
            "trials pruned",
        ],
        rows,
        "What the TPE search picked (best trial of each seed)",
    )


def synthetic_plot(report: Report, all_runs: dict) -> None:
    """Mean test R² and Δm against the task correlation p."""
    names = [n for n in all_runs if n.startswith("synthetic p=")]
    if not names:
        return
    ps = [float(n.split("=")[1]) for n in names]
    pyplot = plt()
    fig, (ax1, ax2) = pyplot.subplots(1, 2, figsize=(9, 3.4))
    colors = {STL: "tab:gray", EQUAL: "tab:orange", TPE: "tab:green", RANDOM: "tab:red"}
    for method in (STL, EQUAL, TPE, RANDOM):
        r2m, r2s, dm, ds = [], [], [], []
        for n in names:
            recs = all_runs[n][method]
            per_seed = [
                np.mean(
                    [
                        v
                        for k, v in r["metrics"].items()
                        if k.startswith("test/") and k.endswith("/r2")
                    ]
                )
                for r in recs
            ]
            m, s = mean_std(per_seed)
            r2m.append(m)
            r2s.append(s)
            m, s = mean_std([r["delta_m"] for r in recs])
            dm.append(m)
            ds.append(s)
        style = {"marker": "o", "capsize": 3, "color": colors[method], "label": method}
        ax1.errorbar(ps, r2m, yerr=r2s, **style)
        if method != STL:
            ax2.errorbar(ps, dm, yerr=ds, **style)
    ax1.set(
        xlabel="task correlation p",
        ylabel="test R² (mean of 2 tasks)",
        title="Synthetic (MMoE generator)",
    )
    ax2.axhline(0, color="gray", lw=0.8)
    ax2.set(xlabel="task correlation p", ylabel="Δm % vs single-task", title="Gain from sharing")
    ax1.legend(fontsize=7)
    report.figure(fig, "quality_synthetic_vs_p", "test R² and Δm against task correlation p")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    quiet_optuna()
    st = settings(args.smoke, args.out)
    report = Report(
        "quality", "Model quality: multi-task vs single-task", "bench.quality", args.out, args.smoke
    )
    lr_note = f"{st['grid']} learning rates log-spaced in the config's search range"
    report.add(
        f"Budget: {len(st['seeds'])} seeds ({', '.join(map(str, st['seeds']))}) per dataset; "
        f"single-task and equal-weight models pick from {lr_note}; each search runs "
        f"{st['budget']} trials (TPE with the config's median pruner, or random sampling "
        "without pruning), then retrains its best params. Searches and lr choices see the "
        f"validation split only; all numbers below are on the test split. Torch uses "
        f"{THREADS} intra-op thread. Dataset overrides: "
        + "; ".join(f"{n}: `{' '.join(o) or 'none'}`" for n, (_, o) in st["datasets"].items())
        + "."
    )
    all_runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mtl-bench-quality-") as tmp:
        for name, (config, overrides) in st["datasets"].items():
            if config == "adult":
                if not adult_data.available():
                    report.add(f"**adult: skipped**: {adult_data.INSTALL_HINT} to include it.")
                    continue
                path = st["adult_csv"] or adult_data.default_path()
                if st["adult_csv"] or not Path(path).is_file():
                    adult_data.write_csv(path, rows=st["adult_rows"])
            cfg = load_config(config, overrides)
            data = prepare(cfg.data)
            print(f"{name}: {data.n_rows} rows", flush=True)
            with Timer() as t:
                runs = run_dataset(name, cfg, data, st, Path(tmp))
            all_runs[name] = runs
            dataset_table(report, name, data, runs, t.seconds)
    summary_table(report, all_runs)
    params_table(report, all_runs)
    synthetic_plot(report, all_runs)
    report.results = {
        "settings": {"seeds": st["seeds"], "budget": st["budget"], "grid": st["grid"]},
        "datasets": {
            name: {
                method: [{k: v for k, v in r.items()} for r in recs]
                for method, recs in runs.items()
            }
            for name, runs in all_runs.items()
        },
        "plots": report.results.get("plots", []),
    }
    report.write()


if __name__ == "__main__":
    main()
