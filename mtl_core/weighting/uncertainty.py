"""Uncertainty weighting: a learned log-variance per task (Kendall, Gal & Cipolla, CVPR 2018).

"Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and
Semantics". Each task t has a log-variance s_t, learned with the model, and

    L = sum_t (exp(-s_t) L_t + s_t) / 2 + penalty,

the paper's Gaussian-likelihood form (1/(2σ²) L + log σ with s = log σ²), used for
every task. LibMTL's ``UW.py`` computes the same sum (its log-variances start at -0.5,
these at 0); torchjd's ``UW`` scalarizer is used as is. The best s_t for a fixed loss
is log L_t, so a task's weight settles near 1 / (2 L_t): a task whose loss is large,
or noisy, counts for less.
"""

from __future__ import annotations

from mtl_core.weighting.base import WEIGHTINGS, Scalarized


@WEIGHTINGS.register("uncertainty")
class Uncertainty(Scalarized):
    """Task weights exp(-s_t) / 2 from learned log-variances s_t (``self.scalarizer.log_var``).

    The log-variances start at 0 (weight 1/2 each) and are an ``nn.Parameter``, so
    the model's optimiser trains them with the model (``train.lr``,
    ``train.weight_decay`` and the schedule apply to them too).
    """

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks, weights)
        from torchjd.scalarization import UW  # here: a served model never needs torchjd

        self.scalarizer = UW(len(self.tasks))
