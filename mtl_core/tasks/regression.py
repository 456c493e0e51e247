"""Regression: one output, MSE on the standardised target, RMSE / MAE / R² in its own units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812
from sklearn import metrics as skm

from mtl_core.errors import DataError
from mtl_core.tasks.base import TASK_TYPES, Task


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


@TASK_TYPES.register("regression")
@dataclass
class RegressionTask(Task):
    """A numeric target, standardised with the training split's mean and std.

    Training on the standardised target makes its MSE comparable to a
    classification log-loss in the validation objective (it is 1 - R² up to the
    variance estimate).
    """

    mean: float = 0.0
    std: float = 1.0

    type = "regression"
    directions = {"rmse": False, "mae": False, "r2": True}
    # R² is left out: its relative change explodes when the baseline's R² is near 0.
    delta_m_metrics = ("rmse", "mae")

    @classmethod
    def from_column(cls, name: str, column: str, values: pd.Series, source: str) -> Task:
        """A non-numeric target column is a DataError naming an offending value."""
        if not _is_numeric(values):
            present = values.dropna()
            bad = present[pd.to_numeric(present.astype(str), errors="coerce").isna().to_numpy()]
            example = (
                f", e.g. {str(bad.iloc[0])[:40]!r} ({len(bad)} of {len(present)} values); list "
                "it in data.coerce_numeric to read such values as missing labels"
                if len(bad)
                else ""
            )
            raise DataError(
                f"{source}: regression target column '{column}' (task '{name}') must be "
                f"numeric, got {values.dtype}{example}"
            )
        return cls(name, column)

    def fit_train(self, values: pd.Series) -> None:
        """Mean and std of the training targets (std 1 when it is 0 or undefined)."""
        y = values.astype(float)
        self.mean = float(y.mean()) if y.notna().any() else 0.0
        std = float(y.std()) if y.notna().sum() > 1 else 1.0
        self.std = std if std > 0 else 1.0

    @property
    def out_dim(self) -> int:
        """One value."""
        return 1

    def encode(self, values: pd.Series) -> np.ndarray:
        """Standardised float32 targets; NaN stays NaN."""
        return ((values.to_numpy(dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def decode(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """``{name}``: the value in the target's units."""
        # float64: a target with a large spread would overflow float32 on the way back.
        return {self.name: scores[:, 0].astype(np.float64) * self.std + self.mean}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Squared error on the standardised scale, per row."""
        return F.mse_loss(outputs[:, 0], targets, reduction="none")

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """RMSE, MAE and R² in the target's own units."""
        y = y.astype(np.float64) * self.std + self.mean
        pred = scores[:, 0].astype(np.float64) * self.std + self.mean
        return {
            "rmse": float(skm.root_mean_squared_error(y, pred)),
            "mae": float(skm.mean_absolute_error(y, pred)),
            "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan"),
        }
