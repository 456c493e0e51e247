"""FAMO (Liu, Feng, Stone & Liu, NeurIPS 2023, "FAMO: Fast Adaptive Multitask Optimization").

FAMO keeps a logit w_t per task, z = softmax(w), and backpropagates

    sum_t c z_t log(L_t + ε),    c = 1 / sum_t (z_t / (L_t + ε))   (c held constant),

whose gradient is sum_t (c z_t / (L_t + ε)) ∇L_t: a convex combination of the task
gradients that aims to decrease every log-loss at the same rate. After the model's
step, the batch's losses are recomputed, and the logits take one step of their own
Adam (``loss.famo_lr``, weight decay ``loss.famo_decay``) along the change in each
log-loss, so a task whose loss fell least gains weight. It needs the losses only,
never per-task gradients. torchjd's ``FAMO`` scalarizer, adapted from the authors'
reference code (github.com/Cranial-XIX/FAMO), is used as is.

A task with no label in a batch has loss 0 there (:func:`~mtl_core.losses.masked_task_losses`),
and the formula would give it all the weight, with no gradient behind it, so that the
batch would barely move the model. Such a task sits the step out instead: its loss
enters FAMO as a value so large that its weight is zero and its logit does not move,
and the other tasks share the step as if it were not there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtl_core.weighting.base import WEIGHTINGS, Scalarized

# The loss a task without labels in the batch enters FAMO with: c z_t / L_t is then 0
# to float precision, and log L_t the same before and after the step.
ABSENT = 1e30


@WEIGHTINGS.register("famo")
class Famo(Scalarized):
    """Task logits learned from each step's loss decrease, by FAMO's own optimiser.

    Args:
        tasks: Task names, in order.
        weights: Unused (FAMO sets its own).
        lr: Learning rate of the logits' Adam (the paper's 0.025).
        decay: Its weight decay γ (1e-3, as in LibMTL and torchjd).
    """

    def __init__(
        self,
        tasks: list[str],
        weights: dict[str, float] | None = None,
        lr: float = 0.025,
        decay: float = 1e-3,
    ) -> None:
        super().__init__(tasks, weights)
        # The losses are non-negative, so the paper's lower bounds (min_losses) stay 0.
        from torchjd.scalarization import FAMO  # here: a served model never needs torchjd

        self.scalarizer = FAMO(len(self.tasks), lr=lr, weight_decay=decay)
        self._absent = torch.zeros(len(self.tasks), dtype=torch.bool)

    def backward(
        self,
        losses: dict[str, torch.Tensor],
        penalty: torch.Tensor | float,
        shared: list[nn.Parameter],
    ) -> torch.Tensor:
        """FAMO's step over the tasks with a loss in this batch (see the module's notes)."""
        self._absent = torch.stack([losses[t] for t in self.tasks]).detach() <= 0
        return super().backward(self._sat_out(losses), penalty, shared)

    def after_step(self, recompute: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Step the logits along the decrease of each log-loss on the same batch.

        The logit of a task that sat the step out keeps its value and its Adam moments:
        the softmax couples its gradient to the others', which would otherwise raise it
        at every batch without its labels, as if its loss had failed to fall.
        """
        new = self._sat_out(recompute())
        absent = self._absent.to(self.scalarizer.min_losses.device)
        (logits,) = self.scalarizer.parameters()
        # torchjd keeps its Adam private; if that ever changes, the logits are still kept.
        adam = getattr(self.scalarizer, "_optimizer", None)
        state = adam.state.get(logits, {}) if adam is not None else {}
        kept = {k: v.clone() for k, v in state.items() if _per_logit(v, logits)}
        kept_logits = logits.detach().clone()
        self.scalarizer.update(torch.stack([new[t] for t in self.tasks]))
        with torch.no_grad():  # torch.where, not a branch on absent.any(): no host sync
            logits.copy_(torch.where(absent, kept_logits, logits))
            state = adam.state.get(logits, {}) if adam is not None else {}
            for k, v in state.items():
                # Adam's first step creates its moments: then an absent task's start at 0.
                before = kept.get(k, torch.zeros_like(v)) if _per_logit(v, logits) else None
                if before is not None:
                    v.copy_(torch.where(absent, before, v))

    def optimised_parameters(self) -> list[nn.Parameter]:
        """None: the logits move only in :meth:`after_step`, by FAMO's own Adam."""
        return []

    def _sat_out(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses, with :data:`ABSENT` for tasks that had none in the step's batch."""
        return {
            t: torch.where(gone, torch.full_like(losses[t], ABSENT), losses[t])
            for t, gone in zip(self.tasks, self._absent, strict=True)
        }


def _per_logit(value: object, logits: torch.Tensor) -> bool:
    """True for an optimiser state entry with one value per logit (Adam's moments)."""
    return isinstance(value, torch.Tensor) and value.shape == logits.shape
