"""Figures for the parent run: search history, parameter importances, MTL vs baselines.

Each function returns a matplotlib Figure; the caller logs and closes it.
"""

from __future__ import annotations

import warnings

import matplotlib
from matplotlib.figure import Figure

from mtl_core.tasks import Task, metric_direction


def _pyplot():
    # Chosen on first use, not at import: figures are drawn off the main thread, headless.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def optimization_history(study) -> Figure:
    """Optuna's optimisation history (objective per trial, best so far)."""
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():  # Optuna flags its matplotlib plots as experimental
        warnings.simplefilter("ignore")
        return plot_optimization_history(study).figure


def param_importances(study) -> Figure | None:
    """Optuna's fANOVA parameter importances; None with fewer than two completed trials."""
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_param_importances

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return plot_param_importances(study).figure
    except (RuntimeError, ValueError):  # e.g. every trial sampled the same point
        return None


def mtl_vs_baselines(
    tasks: list[Task], mtl: dict[str, float], stl: dict[str, float], split: str = "test"
) -> Figure:
    """Bar chart of each task's metrics: multi-task model against its single-task baseline."""
    keys = [k for k in mtl if k.startswith(f"{split}/") and k.count("/") == 2 and k in stl]
    fig, axes = _pyplot().subplots(1, max(1, len(keys)), figsize=(2.2 * max(1, len(keys)), 3.2))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, key in zip(axes, keys, strict=False):
        _, task, metric = key.split("/")
        ax.bar(["MTL", "single"], [mtl[key], stl[key]], color=["tab:blue", "tab:gray"])
        arrow = "↑" if metric_direction(metric) else "↓"
        ax.set_title(f"{task}\n{metric} {arrow}", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"{split} metrics: multi-task vs single-task ({len(tasks)} tasks)", fontsize=10)
    fig.tight_layout()
    return fig


def drift_psi(report, top: int = 30) -> Figure:
    """Horizontal bars of each feature's PSI (the ``top`` highest), drifted ones in red.

    Args:
        report: A :class:`~mtl_core.drift.DriftReport`.
        top: Features shown at most.
    """
    feats = report.features[:top][::-1]  # highest PSI at the top
    fig, ax = _pyplot().subplots(figsize=(6.0, 0.9 + 0.22 * max(1, len(feats))))
    colors = ["tab:red" if f.drifted else "tab:gray" for f in feats]
    ax.barh([f.feature for f in feats], [f.psi for f in feats], color=colors)
    ax.axvline(report.psi_threshold, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(f"PSI (threshold {report.psi_threshold:g}; red: drifted, p < {report.p_value:g})")
    shown = f", top {top} of {len(report.features)}" if len(report.features) > top else ""
    ax.set_title(
        f"Input drift: {len(report.drifted)} of {len(report.features)} features{shown}",
        fontsize=10,
    )
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Release a figure's memory."""
    _pyplot().close(fig)
