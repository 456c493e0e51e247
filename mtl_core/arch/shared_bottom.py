"""Shared bottom: hard parameter sharing (Caruana, "Multitask Learning", 1997).

Every task reads the same trunk representation; only the towers are task-specific.
With ``activation: identity`` and one hidden layer it is the seed's single shared
linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.arch.base import ARCHS, Architecture, mlp, tower
from mtl_core.config import ModelConfig


@ARCHS.register("shared_bottom")
class SharedBottom(Architecture):
    """An MLP trunk of ``cfg.hidden`` layers and one tower per task."""

    def __init__(self, in_dim: int, out_dims: dict[str, int], cfg: ModelConfig) -> None:
        super().__init__(in_dim, out_dims, cfg)
        self.trunk, width = mlp(in_dim, cfg)
        self.heads = nn.ModuleDict({t: tower(width, n, cfg) for t, n in out_dims.items()})

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z`` (B, in_dim) -> trunk (B, width) -> each tower."""
        h = self.trunk(z)
        return {t: head(h) for t, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's parameters."""
        return list(self.trunk.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """One tower's parameters."""
        return list(self.heads[task].parameters())
