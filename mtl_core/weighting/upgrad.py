"""UPGrad (Quinton & Rey, 2024, "Jacobian Descent for Multi-Objective Optimization").

Each task's gradient on the shared parameters is projected onto the dual cone of
all of them (the directions that increase no task's loss, to first order), and
the projections are summed. The update therefore never conflicts with any task,
and equals the plain sum of gradients when none conflict. torchjd's ``UPGrad``
aggregates the Jacobian; :class:`~mtl_core.weighting.base.Aggregated` handles the
task-specific parameters and the penalty.
"""

from __future__ import annotations

import torch

from mtl_core.weighting.base import WEIGHTINGS, Aggregated


@WEIGHTINGS.register("upgrad")
class UPGradWeighting(Aggregated):
    """Sum of the task gradients, each projected onto the dual cone of all of them."""

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks, weights)
        # A preference of 1 per task (torchjd's default is 1/T) scales the update like the
        # sum of losses that static and PCGrad step on, so that loss.l1, loss.l2 and
        # train.grad_clip mean the same under every method.
        from torchjd.aggregation import UPGrad  # here: a served model never needs torchjd

        self.aggregator = UPGrad(pref_vector=torch.ones(len(self.tasks)))
