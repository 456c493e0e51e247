"""Multi-class classification: one logit per class, cross-entropy, accuracy / macro-F1."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from sklearn import metrics as skm

from mtl_core.tasks.base import TASK_TYPES, softmax
from mtl_core.tasks.classification import ClassificationTask


@TASK_TYPES.register("multiclass")
@dataclass
class MulticlassTask(ClassificationTask):
    """Two or more classes; the model outputs one logit per class."""

    type = "multiclass"
    directions = {"accuracy": True, "macro_f1": True}
    delta_m_metrics = ("accuracy", "macro_f1")

    @property
    def out_dim(self) -> int:
        """One logit per class."""
        return len(self.classes)

    def decode(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """``{name}``: the most probable class; ``{name}_proba_{class}``: each probability."""
        probs = softmax(scores.astype(np.float64))
        classes = np.asarray(self.classes, dtype=object)
        cols = {self.name: classes[probs.argmax(axis=1)]}
        cols.update({f"{self.name}_proba_{c}": probs[:, i] for i, c in enumerate(self.classes)})
        return cols

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, per row."""
        return F.cross_entropy(outputs, targets.long(), reduction="none")

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """Accuracy and macro-F1 of the most probable class."""
        pred = scores.argmax(axis=1)
        y = y.astype(int)
        return {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        }
