"""Evaluation: per-task metrics from scikit-learn, the objective, and delta_m.

Metric keys read ``{split}/{task}/{metric}`` (``test/income/auc``); the
aggregates are ``{split}/objective`` (mean task loss, lower is better; see
:mod:`mtl_core.train`) and ``{split}/delta_m``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtl_core.data import PreparedData
from mtl_core.losses import task_loss_sums
from mtl_core.tasks import Task, metric_direction
from mtl_core.train import predict_outputs


def task_metrics(task: Task, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics of one task on rows whose label is present.

    Args:
        task: The fitted task.
        y: Encoded targets (N,), NaN where missing.
        scores: Model outputs (N, out_dim).
    """
    mask = ~np.isnan(y)
    if not mask.any():
        return {}
    return task.metrics(y[mask], scores[mask])


def task_loss(task: Task, y: np.ndarray, scores: np.ndarray) -> float:
    """Mean training loss of one task over rows whose label is present (NaN if none)."""
    sums, counts = task_loss_sums(
        [task], {task.name: torch.as_tensor(scores)}, {task.name: torch.as_tensor(y)}
    )
    return float(sums[0] / counts[0]) if counts[0] > 0 else float("nan")


def evaluate(
    model: nn.Module,
    data: PreparedData,
    splits: tuple[str, ...] = ("val", "test"),
    device: str = "auto",
) -> dict[str, float]:
    """Per-task metrics and the objective of ``model`` on the given splits.

    Returns:
        ``{"{split}/{task}/{metric}": value, "{split}/objective": value, ...}``.
    """
    out: dict[str, float] = {}
    for split in splits:
        s = data.splits[split]
        scores = predict_outputs(model, s.X, s.C, device)
        losses = []
        for task in data.tasks:
            for m, v in task_metrics(task, s.y[task.name], scores[task.name]).items():
                out[f"{split}/{task.name}/{m}"] = v
            losses.append(task_loss(task, s.y[task.name], scores[task.name]))
        out[f"{split}/objective"] = float(np.nanmean(losses))
    return out


def delta_m(
    mtl: dict[str, float], stl: dict[str, float], tasks: list[Task], split: str = "test"
) -> float:
    """Average relative improvement of the multi-task model over single-task baselines, in %.

    LibMTL's definition (Lin & Zhang, 2023; Maninis et al., CVPR 2019):
    delta_m = 100/T * sum_t mean_m s_m (M_mtl - M_stl) / |M_stl|, with s_m = +1
    when higher is better and -1 otherwise, so a positive value means sharing
    helped. Each task type averages its ``delta_m_metrics``.
    """
    per_task = []
    for task in tasks:
        rel = []
        for m in task.delta_m_metrics:
            key = f"{split}/{task.name}/{m}"
            if key in mtl and key in stl and stl[key] != 0:
                sign = 1.0 if metric_direction(m) else -1.0
                rel.append(sign * (mtl[key] - stl[key]) / abs(stl[key]))
        if rel:
            per_task.append(float(np.mean(rel)))
    return 100.0 * float(np.mean(per_task)) if per_task else float("nan")
