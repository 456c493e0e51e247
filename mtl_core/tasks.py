"""Task types: the loss, output size, prediction and metrics of each kind of task.

A registry of plain objects keyed by the short name used in YAML
(``binary``, ``multiclass``, ``regression``), in the style of timm's
``register_model``. Metrics come from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from sklearn import metrics as skm

# Metric name -> True when higher is better. Used for delta_m signs and plots.
HIGHER_IS_BETTER = {
    "auc": True,
    "accuracy": True,
    "log_loss": False,
    "macro_f1": True,
    "rmse": False,
    "mae": False,
    "r2": True,
}


@dataclass(frozen=True)
class TaskKind:
    """Behaviour shared by all tasks of one type.

    Attributes:
        name: Registry key.
        out_dim: Output units for a task with ``n_classes`` classes (0 for regression).
        loss: ``(outputs (N, out_dim), targets (N,)) -> (N,)`` per-row loss; targets
            are float class indices or standardised values, never NaN.
        metrics: ``(y_true (N,), scores (N, out_dim)) -> {metric: value}``.
        delta_m_metrics: Metrics averaged into delta_m for this task type.
    """

    name: str
    out_dim: Callable[[int], int]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    delta_m_metrics: tuple[str, ...]


TASK_KINDS: dict[str, TaskKind] = {}


def register(kind: TaskKind) -> TaskKind:
    """Add a task kind to the registry under ``kind.name``."""
    TASK_KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> TaskKind:
    """Look up a task kind; an unknown name lists the known ones."""
    try:
        return TASK_KINDS[name]
    except KeyError:
        raise KeyError(f"unknown task type '{name}'; known: {sorted(TASK_KINDS)}") from None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) scores."""
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _binary_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    p = sigmoid(scores[:, 0].astype(np.float64))
    y = y.astype(int)
    out = {
        "accuracy": skm.accuracy_score(y, p >= 0.5),
        "log_loss": skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]),
    }
    # AUC is undefined on a split that holds one class only; leave it out then.
    if len(np.unique(y)) == 2:
        out["auc"] = skm.roc_auc_score(y, p)
    return {k: float(v) for k, v in out.items()}


def _multiclass_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    pred = scores.argmax(axis=1)
    y = y.astype(int)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
    }


def _regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    pred = pred[:, 0]
    return {
        "rmse": float(skm.root_mean_squared_error(y, pred)),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan"),
    }


register(
    TaskKind(
        name="binary",
        out_dim=lambda n_classes: 1,
        loss=lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y, reduction="none"),
        metrics=_binary_metrics,
        delta_m_metrics=("auc", "accuracy", "log_loss"),
    )
)
register(
    TaskKind(
        name="multiclass",
        out_dim=lambda n_classes: n_classes,
        loss=lambda out, y: F.cross_entropy(out, y.long(), reduction="none"),
        metrics=_multiclass_metrics,
        delta_m_metrics=("accuracy", "macro_f1"),
    )
)
register(
    TaskKind(
        name="regression",
        out_dim=lambda n_classes: 1,
        loss=lambda out, y: F.mse_loss(out[:, 0], y, reduction="none"),
        metrics=_regression_metrics,
        # R² is left out: its relative change explodes when the baseline's R² is near 0.
        delta_m_metrics=("rmse", "mae"),
    )
)
