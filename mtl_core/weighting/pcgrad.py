"""PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020, "Gradient Surgery").

"Gradient Surgery for Multi-Task Learning". For each task, in a random order of
the others, its gradient on the shared parameters loses its component along any
other task's gradient that it conflicts with (negative inner product); the
surgically altered gradients are summed. torchjd's ``PCGrad`` aggregates the
Jacobian (its random order draws from torch's global generator, which ``fit``
seeds); :class:`~mtl_core.weighting.base.Aggregated` handles the task-specific
parameters and the penalty.
"""

from __future__ import annotations

from mtl_core.weighting.base import WEIGHTINGS, Aggregated


@WEIGHTINGS.register("pcgrad")
class PCGradWeighting(Aggregated):
    """Sum of the task gradients with their pairwise conflicts projected out."""

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks, weights)
        from torchjd.aggregation import PCGrad  # here: a served model never needs torchjd

        self.aggregator = PCGrad()
