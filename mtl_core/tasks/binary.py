"""Binary classification: one logit, binary cross-entropy, AUC / accuracy / log-loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from sklearn import metrics as skm

from mtl_core.tasks.base import TASK_TYPES, sigmoid
from mtl_core.tasks.classification import ClassificationTask


@TASK_TYPES.register("binary")
@dataclass
class BinaryTask(ClassificationTask):
    """Two classes; the model's one output is the logit of the second (sorted) class."""

    type = "binary"
    directions = {"auc": True, "accuracy": True, "log_loss": False}
    delta_m_metrics = ("auc", "accuracy", "log_loss")
    max_classes = 2

    @property
    def out_dim(self) -> int:
        """One logit."""
        return 1

    def decode(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """``{name}``: the class at p >= 0.5; ``{name}_proba``: p of the second class."""
        p1 = sigmoid(scores[:, 0].astype(np.float64))
        classes = np.asarray(self.classes, dtype=object)
        return {self.name: classes[(p1 >= 0.5).astype(int)], f"{self.name}_proba": p1}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy on the logit, per row."""
        return F.binary_cross_entropy_with_logits(outputs[:, 0], targets, reduction="none")

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """Accuracy and log-loss; AUC too when both classes are present."""
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
