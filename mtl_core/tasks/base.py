"""The task-type seam: a :class:`Task` owns everything that depends on what kind of target it is.

A task type is one subclass in one file, registered under the short name used in
YAML (``type: binary``). It knows how to check and encode its target column, how
to label rows for stratified splits, its per-row loss, its metrics and their
directions, and how to turn model outputs back into named prediction columns. No
other module branches on the type's name.

A fitted task is a plain dataclass; :meth:`Task.to_dict` and :func:`task_from_dict`
carry it through JSON, so a saved model needs no pickle to rebuild its tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from mtl_core.registry import Registry

TASK_TYPES: Registry[type[Task]] = Registry("task type", "data.tasks[].type")


@dataclass
class Task:
    """One prediction task as fitted on data: a name, its target column, and type state.

    Subclasses set the class attributes and implement the methods below.

    Attributes:
        type: Registry name (``binary``).
        directions: Every metric the type reports -> True when higher is better.
        delta_m_metrics: Metrics averaged into Δm for this type.
    """

    name: str
    column: str

    type: ClassVar[str]
    directions: ClassVar[dict[str, bool]]
    delta_m_metrics: ClassVar[tuple[str, ...]]

    @classmethod
    def from_column(cls, name: str, column: str, values: pd.Series, source: str) -> Task:
        """Check a target column (all labelled rows) and build the task; DataError if unusable."""
        raise NotImplementedError

    def fit_train(self, values: pd.Series) -> None:
        """Learn what must come from the training split only (e.g. target scaling)."""

    def stratify_labels(self, values: pd.Series) -> pd.Series | None:
        """Labels to stratify splits on, or None when the type cannot be stratified."""
        return None

    @property
    def out_dim(self) -> int:
        """Number of model outputs for this task."""
        raise NotImplementedError

    def encode(self, values: pd.Series) -> np.ndarray:
        """Raw target values (N,) -> float32 training targets; NaN marks a missing label."""
        raise NotImplementedError

    def decode(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs (N, out_dim) -> named prediction columns in the target's own units."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row training loss (N,) of outputs (N, out_dim) against encoded targets (N,).

        Targets are never NaN here: the caller masks missing labels.
        """
        raise NotImplementedError

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """Metrics on labelled rows: encoded targets (N,) and outputs (N, out_dim)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state, with ``type`` to rebuild it (:func:`task_from_dict`)."""
        return {"type": self.type, **dataclasses.asdict(self)}


def task_from_dict(state: dict[str, Any]) -> Task:
    """Rebuild a fitted task from :meth:`Task.to_dict`."""
    state = dict(state)
    return TASK_TYPES.lookup(state.pop("type"))(**state)


def metric_direction(metric: str) -> bool:
    """True when higher is better for ``metric``, across the registered task types."""
    for cls in TASK_TYPES.values():
        if metric in cls.directions:
            return cls.directions[metric]
    raise KeyError(f"metric '{metric}' is not reported by any task type")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) scores."""
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
