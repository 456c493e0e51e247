"""Evaluation: per-task metrics from scikit-learn, the objective, and delta_m.

Metric keys read ``{split}/{task}/{metric}`` (``test/income/auc``); the
aggregates are ``{split}/objective`` (mean task loss, lower is better; see
:mod:`mtl_core.train`) and ``{split}/delta_m``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtl_core.data import PreparedData, TaskSpec
from mtl_core.tasks import HIGHER_IS_BETTER, get_kind
from mtl_core.train import predict_outputs


def task_metrics(spec: TaskSpec, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics of one task on rows whose label is present.

    Args:
        spec: The fitted task.
        y: Encoded targets (N,), NaN where missing.
        scores: Model outputs (N, out_dim).
    """
    mask = ~np.isnan(y)
    if not mask.any():
        return {}
    y, scores = y[mask], scores[mask]
    if spec.type == "regression":
        y, scores = spec.true_values(y), scores * spec.std + spec.mean
    return get_kind(spec.type).metrics(y, scores)


def task_loss(spec: TaskSpec, y: np.ndarray, scores: np.ndarray) -> float:
    """Mean training loss of one task over rows whose label is present."""
    mask = ~np.isnan(y)
    if not mask.any():
        return float("nan")
    kind = get_kind(spec.type)
    out = kind.loss(torch.as_tensor(scores[mask]), torch.as_tensor(y[mask]))
    return float(out.mean())


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
        scores = predict_outputs(model, s.X, device)
        losses = []
        for spec in data.tasks:
            for m, v in task_metrics(spec, s.y[spec.name], scores[spec.name]).items():
                out[f"{split}/{spec.name}/{m}"] = v
            losses.append(task_loss(spec, s.y[spec.name], scores[spec.name]))
        out[f"{split}/objective"] = float(np.nanmean(losses))
    return out


def delta_m(
    mtl: dict[str, float], stl: dict[str, float], tasks: list[TaskSpec], split: str = "test"
) -> float:
    """Average relative improvement of the multi-task model over single-task baselines, in %.

    LibMTL's definition (Lin & Zhang, 2023; Maninis et al., CVPR 2019):
    delta_m = 100/T * sum_t mean_m s_m (M_mtl - M_stl) / |M_stl|, with s_m = +1
    when higher is better and -1 otherwise, so a positive value means sharing
    helped. Each task type averages its ``delta_m_metrics``.
    """
    per_task = []
    for spec in tasks:
        rel = []
        for m in get_kind(spec.type).delta_m_metrics:
            key = f"{split}/{spec.name}/{m}"
            if key in mtl and key in stl and stl[key] != 0:
                sign = 1.0 if HIGHER_IS_BETTER[m] else -1.0
                rel.append(sign * (mtl[key] - stl[key]) / abs(stl[key]))
        if rel:
            per_task.append(float(np.mean(rel)))
    return 100.0 * float(np.mean(per_task)) if per_task else float("nan")
