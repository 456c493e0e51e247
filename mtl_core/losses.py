"""Task losses, the L1/L2 penalty, and the weighting that combines them.

One masked function, :func:`task_loss_sums`, computes every per-task loss in the
project: the training step, the validation objective and evaluation. A task's
loss is its own per-row loss (:meth:`~mtl_core.tasks.Task.loss`) averaged over
the rows whose label for that task is present.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtl_core.config import LossConfig
from mtl_core.tasks import Task
from mtl_core.weighting import WEIGHTINGS, Weighting


def masked_loss(
    task: Task, outputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's summed per-row loss over rows with a label, and how many rows those are.

    Args:
        task: The task, which owns its per-row loss.
        outputs: Its outputs (B, out_dim).
        targets: Its encoded targets (B,), NaN where the label is missing.

    Returns:
        ``(sum, count)``, two scalars.
    """
    # Masking by multiplication, not indexing, keeps the step free of host syncs.
    mask = ~torch.isnan(targets)
    per_row = task.loss(outputs.float(), torch.where(mask, targets, 0.0))  # (B,)
    return (per_row * mask).sum(), mask.sum()


def task_loss_sums(
    tasks: list[Task], outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`masked_loss` of every task, stacked: ``(sums (T,), counts (T,))`` in task order."""
    pairs = [masked_loss(t, outputs[t.name], targets[t.name]) for t in tasks]
    return torch.stack([s for s, _ in pairs]), torch.stack([n for _, n in pairs]).float()


def masked_task_losses(
    tasks: list[Task], outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mean loss per task over rows whose label is present (0 for a task with none)."""
    out = {}
    for t in tasks:
        total, count = masked_loss(t, outputs[t.name], targets[t.name])
        out[t.name] = total / count.clamp_min(1)
    return out


def penalised_parameters(model: nn.Module, scope: str) -> list[nn.Parameter]:
    """Weight matrices subject to L1/L2: the shared ones (``trunk``) or every one (``all``).

    Biases and normalisation parameters (all 1-D) are never penalised.
    """
    source = model.shared_parameters() if scope == "trunk" else model.parameters()
    return [p for p in source if p.ndim >= 2]


class MultiTaskLoss:
    """Task losses, the L1/L2 penalty and a weighting method, for one model.

    Args:
        tasks: The fitted tasks.
        weighting: Turns task losses into gradients (:mod:`mtl_core.weighting`).
        l1: L1 penalty coefficient.
        l2: Squared-L2 penalty coefficient.
        penalty_scope: ``trunk`` (shared parameters) or ``all``.
    """

    def __init__(
        self,
        tasks: list[Task],
        weighting: Weighting,
        l1: float = 0.0,
        l2: float = 0.0,
        penalty_scope: str = "trunk",
    ) -> None:
        self.tasks = list(tasks)
        self.weighting = weighting
        self.l1, self.l2, self.scope = l1, l2, penalty_scope

    @property
    def names(self) -> list[str]:
        """Task names, in order."""
        return [t.name for t in self.tasks]

    def task_losses(
        self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Mean loss per task over rows whose label is present (NaN = missing)."""
        return masked_task_losses(self.tasks, outputs, targets)

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

    def backward(
        self,
        model: nn.Module,
        per_task: dict[str, torch.Tensor],
        shared: list[nn.Parameter] | None = None,
    ) -> torch.Tensor:
        """Gradients of one step through the weighting method; returns the step's loss.

        ``shared`` is ``model.shared_parameters()``, which a training loop passes in once
        per epoch rather than rebuilding the list every step.
        """
        if shared is None:
            shared = model.shared_parameters()
        return self.weighting.backward(per_task, self.penalty(model), shared)

    def after_step(self, recompute: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Pass the post-step hook on to the weighting method."""
        self.weighting.after_step(recompute)


def build_loss(cfg: LossConfig, tasks: list[Task]) -> MultiTaskLoss:
    """The loss of a config section: its weighting method, with its options.

    Static weights default to 1; a method's options are its ``loss.{method}_*`` fields.
    """
    names = [t.name for t in tasks]
    weights = {n: (cfg.weights or {}).get(n, 1.0) for n in names}
    weighting = WEIGHTINGS.lookup(cfg.weighting)(names, weights, **cfg.weighting_options())
    return MultiTaskLoss(tasks, weighting, cfg.l1, cfg.l2, cfg.penalty_scope)
