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

A task with no label in a batch has loss 0 there, and the formula then gives it all
the weight, with no gradient behind it: that batch barely moves the model. Tasks
with sparse labels want batches large enough to hold some of each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtl_core.weighting.base import WEIGHTINGS, Scalarized


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

    def after_step(self, recompute: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Step the logits along the decrease of each log-loss on the same batch."""
        new = recompute()
        self.scalarizer.update(torch.stack([new[t] for t in self.tasks]))

    def optimised_parameters(self) -> list[nn.Parameter]:
        """None: the logits move only in :meth:`after_step`, by FAMO's own Adam."""
        return []
