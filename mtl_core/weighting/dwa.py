"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

"End-to-End Multi-Task Learning with Attention". In epoch e the weight of task k is

    λ_k(e) = K exp(r_k / T) / sum_i exp(r_i / T),    r_k = L_k(e-1) / L_k(e-2),

with L_k the mean training loss of an epoch, K the number of tasks (the weights
sum to K) and T the temperature (``loss.dwa_temperature``, 2 in the paper). A task
whose loss fell least in the last epoch gets the most weight; the first two epochs,
with no two past losses yet, weigh every task 1. torchjd's ``DWA`` scalarizer is
used as is.
"""

from __future__ import annotations

from mtl_core.weighting.base import WEIGHTINGS, Scalarized


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(Scalarized):
    """Weights from the ratio of the last two epochs' mean training losses.

    Args:
        tasks: Task names, in order.
        weights: Unused (DWA sets its own).
        temperature: T > 0; larger makes the weights more uniform.
    """

    def __init__(
        self, tasks: list[str], weights: dict[str, float] | None = None, temperature: float = 2.0
    ) -> None:
        super().__init__(tasks, weights)
        from torchjd.scalarization import DWA  # here: a served model never needs torchjd

        self.scalarizer = DWA(temperature)

    def epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Close the epoch: next epoch's weights use its mean loss.

        torchjd's ``DWA`` has summed the epoch's batch losses itself; their mean is
        the ``epoch_losses`` that ``fit`` passes here.
        """
        self.scalarizer.step()
