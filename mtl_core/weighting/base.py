"""The weighting seam: how the task losses of a step become the gradients of the update.

A weighting method is one :class:`Weighting` subclass in one file, registered
under the name ``loss.weighting`` selects (LibMTL's ``weighting/`` folder has the
same shape). It is an ``nn.Module``, so parameters it learns (Kendall et al.'s
log-variances, say) join the optimiser with the model's.

The training loop calls, per step, :meth:`Weighting.backward` (after
``zero_grad``) and :meth:`Weighting.after_step` (after the optimiser step), and
:meth:`Weighting.epoch_end` once per epoch. Only methods that need a hook
implement it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtl_core.registry import Registry

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method", "loss.weighting")


class Weighting(nn.Module):
    """Turns per-task losses into gradients.

    Args:
        tasks: Task names, in order.
        weights: Static task weights (only ``static`` uses them).

    Attributes:
        learns_weights: True when the method sets the task weights itself, so a
            search must not also sample static weights for it.
    """

    learns_weights = True

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def backward(
        self,
        losses: dict[str, torch.Tensor],
        penalty: torch.Tensor | float,
        shared: list[nn.Parameter],
    ) -> torch.Tensor:
        """Accumulate gradients into ``.grad``; return the step's scalar loss, detached.

        Args:
            losses: Each task's mean loss on the batch (scalars with graphs).
            penalty: The L1/L2 penalty (added as is, never reweighted).
            shared: The model's shared parameters, for methods that act on gradients.
        """
        raise NotImplementedError

    def after_step(self, recompute: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Called after the optimiser step; ``recompute()`` gives the batch's new task losses."""

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Called with each task's mean training loss of the epoch."""

    def current_weights(self) -> dict[str, float]:
        """The task weights in use now, for logs."""
        return dict.fromkeys(self.tasks, 1.0)
