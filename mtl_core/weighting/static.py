"""Static weighting: L = sum_t w_t L_t + penalty, with w_t fixed (and tuned by the search).

Tuned scalarisation is the baseline that Kurin et al. (NeurIPS 2022, "In Defense of
the Unitary Scalarization for Deep Multi-Task Learning") and Xin et al. (NeurIPS 2022,
"Do Current Multi-Task Optimization Methods in Deep Learning Even Help?") found as
good as the specialised optimisers.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.weighting.base import WEIGHTINGS, Weighting


@WEIGHTINGS.register("static")
class Static(Weighting):
    """A fixed weight per task (default 1)."""

    learns_weights = False

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks, weights)
        unknown = sorted(set(weights or {}) - set(self.tasks))
        if unknown:
            raise ValueError(f"weights {unknown} must match the tasks {self.tasks}")
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights must be >= 0, got {self.weights}")

    def backward(
        self,
        losses: dict[str, torch.Tensor],
        penalty: torch.Tensor | float,
        shared: list[nn.Parameter],
    ) -> torch.Tensor:
        """Backpropagate the weighted sum plus the penalty."""
        total = sum(self.weights[t] * losses[t] for t in self.tasks) + penalty
        total.backward()
        return total.detach()

    def current_weights(self) -> dict[str, float]:
        """The fixed weights."""
        return dict(self.weights)
