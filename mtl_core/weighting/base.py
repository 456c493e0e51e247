"""The weighting seam: how the task losses of a step become the gradients of the update.

A weighting method is one :class:`Weighting` subclass in one file, registered
under the name ``loss.weighting`` selects (LibMTL's ``weighting/`` folder has the
same shape). It is an ``nn.Module``, so parameters it learns (Kendall et al.'s
log-variances, say) join the optimiser with the model's.

The training loop calls, per step, :meth:`Weighting.backward` (after
``zero_grad``) and :meth:`Weighting.after_step` (after the optimiser step), and
:meth:`Weighting.epoch_end` once per epoch. Only methods that need a hook
implement it.

Two families get a ready base, so that a member built on torchjd is a few lines:
:class:`Scalarized` backpropagates one scalar made of the losses by a
``torchjd.scalarization.Scalarizer`` (uncertainty, DWA, FAMO), and
:class:`Aggregated` aggregates the Jacobian of the losses with respect to the
shared parameters with a ``torchjd.aggregation.Aggregator`` (UPGrad, PCGrad).
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

    A method with options takes them as further keyword arguments; ``build_loss``
    passes the ``loss.{name}_{option}`` config fields of the selected method
    (``loss.dwa_temperature`` becomes ``temperature``).

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

    def optimised_parameters(self) -> list[nn.Parameter]:
        """Parameters for the model's optimiser to step: all, unless the method steps its own."""
        return list(self.parameters())


class _LastWeights(Weighting):
    """Keeps the last step's weights as a tensor; they reach the host only when logged."""

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks, weights)
        self._last: torch.Tensor | None = None  # (T,)

    def current_weights(self) -> dict[str, float]:
        """The weights the last step applied to each task's gradient (1 each before any step)."""
        if self._last is None:
            return super().current_weights()
        return dict(zip(self.tasks, self._last.tolist(), strict=True))


class Scalarized(_LastWeights):
    """Backpropagates ``scalarizer(L) + penalty``, L the (T,) vector of task losses.

    A member sets ``self.scalarizer`` to a ``torchjd.scalarization.Scalarizer``.
    """

    scalarizer: nn.Module

    def backward(
        self,
        losses: dict[str, torch.Tensor],
        penalty: torch.Tensor | float,
        shared: list[nn.Parameter],
    ) -> torch.Tensor:
        """Backpropagate the scalarized losses plus the penalty; return that total."""
        values = torch.stack([losses[t] for t in self.tasks])  # (T,)
        # d total / d L_t is the weight the step gave task t, whatever the scalarizer's form.
        values.retain_grad()
        total = self.scalarizer(values) + penalty
        total.backward()
        self._last = values.grad
        return total.detach()


class Aggregated(_LastWeights):
    """Jacobian descent on the shared parameters, ordinary gradients on the others.

    The Jacobian of the task losses with respect to the shared parameters (one
    row per task) is aggregated by ``self.aggregator``, a
    ``torchjd.aggregation.Aggregator``, into their ``.grad``; the penalty's
    gradient is added to it, never aggregated as a task. Every other parameter
    gets the gradient of ``sum_t L_t + penalty``. The returned loss is that sum.
    """

    aggregator: nn.Module

    def backward(
        self,
        losses: dict[str, torch.Tensor],
        penalty: torch.Tensor | float,
        shared: list[nn.Parameter],
    ) -> torch.Tensor:
        """Aggregate the shared Jacobian; backpropagate the sum elsewhere; return the sum."""
        from torchjd import autojac  # imported here: the trained model never needs it

        values = torch.stack([losses[t] for t in self.tasks])  # (T,)
        total = values.sum() + penalty
        params = [p for p in shared if p.requires_grad]
        if not params:
            total.backward()
            return total.detach()
        # p.jac (T, *p.shape); torchjd fills zeros where a task does not reach p.
        autojac.backward(values, inputs=params, retain_graph=True)
        penalty_grads = _grads(penalty, params)
        # The seam names the shared parameters only, so one ordinary backward reaches the
        # task-specific ones (every other leaf of the graph); it also writes the shared ones'
        # .grad, replaced just below. The cost is one more pass through the shared layers.
        total.backward()
        for p, g in zip(params, penalty_grads, strict=True):
            p.grad = g
        self._last = autojac.jac_to_grad(params, self.aggregator)  # adds into .grad
        return total.detach()


def _grads(penalty: torch.Tensor | float, params: list[nn.Parameter]) -> list[torch.Tensor | None]:
    """Gradient of the penalty for each parameter (None where it has none)."""
    if not isinstance(penalty, torch.Tensor) or not penalty.requires_grad:
        return [None] * len(params)
    # Kept: the ordinary backward that follows goes through the penalty too.
    return list(torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True))
