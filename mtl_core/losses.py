"""The weighted, regularised multi-task loss.

L = sum_t w_t * L_t + l1 * ||θ||_1 + l2 * ||θ||_2^2, with L_t the task's own
loss (binary or multi-class cross-entropy, MSE on the standardised target)
averaged over the rows whose label for that task is present.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.config import LossConfig
from mtl_core.tasks import get_kind


def penalised_parameters(model: nn.Module, scope: str) -> list[nn.Parameter]:
    """Weight matrices subject to L1/L2: the trunk's (``trunk``) or every one (``all``).

    Biases and normalisation parameters (all 1-D) are never penalised.
    """
    source = model.trunk if scope == "trunk" else model
    return [p for p in source.parameters() if p.ndim >= 2]


class MultiTaskLoss:
    """Callable computing the total loss and each task's loss.

    Args:
        task_types: Task type per task name.
        weights: Non-negative weight per task name.
        l1: L1 penalty coefficient.
        l2: Squared-L2 penalty coefficient.
        penalty_scope: ``trunk`` or ``all``.
    """

    def __init__(
        self,
        task_types: dict[str, str],
        weights: dict[str, float],
        l1: float = 0.0,
        l2: float = 0.0,
        penalty_scope: str = "trunk",
    ) -> None:
        if set(weights) != set(task_types):
            raise ValueError(f"weights {sorted(weights)} must match tasks {sorted(task_types)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be >= 0, got {weights}")
        self.kinds = {name: get_kind(t) for name, t in task_types.items()}
        self.weights = dict(weights)
        self.l1, self.l2, self.scope = l1, l2, penalty_scope

    def task_losses(
        self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Mean loss per task over rows whose label is present (NaN = missing)."""
        losses = {}
        for name, kind in self.kinds.items():
            y = targets[name]
            # Masking by multiplication, not indexing, keeps the step free of host syncs.
            mask = ~torch.isnan(y)
            per_row = kind.loss(outputs[name].float(), torch.where(mask, y, 0.0))  # (B,)
            losses[name] = (per_row * mask).sum() / mask.sum().clamp_min(1)
        return losses

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """l1 * ||θ||_1 + l2 * ||θ||_2^2 over the penalised parameters."""
        if not (self.l1 or self.l2):
            return 0.0
        params = penalised_parameters(model, self.scope)
        total = 0.0
        if self.l1:
            total = total + self.l1 * sum(p.abs().sum() for p in params)
        if self.l2:
            total = total + self.l2 * sum(p.pow(2).sum() for p in params)
        return total

    def __call__(
        self, model: nn.Module, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total, {task: task_loss})``; the task losses are unweighted."""
        per_task = self.task_losses(outputs, targets)
        total = sum(self.weights[n] * v for n, v in per_task.items()) + self.penalty(model)
        return total, per_task


def build_loss(cfg: LossConfig, task_types: dict[str, str]) -> MultiTaskLoss:
    """Build the loss from a config section; weights default to 1 per task."""
    weights = dict(cfg.weights) if cfg.weights else dict.fromkeys(task_types, 1.0)
    return MultiTaskLoss(task_types, weights, cfg.l1, cfg.l2, cfg.penalty_scope)
