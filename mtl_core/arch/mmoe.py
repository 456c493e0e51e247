"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

Ma, Zhao, Yi, Chen, Hong and Chi, "Modeling Task Relationships in Multi-task
Learning with Multi-gate Mixture-of-Experts", KDD 2018. Instead of one trunk,
``n_experts`` expert networks all read the input, and each task mixes their
outputs with its own softmax gate on the input, so tasks that conflict can learn
to lean on different experts (the paper's Eq. 5-6). LibMTL's
``architecture/MMoE.py`` has the same shape.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.arch.base import ARCHS, Architecture, mlp, tower
from mtl_core.config import ModelConfig


@ARCHS.register("mmoe")
class MMoE(Architecture):
    """``cfg.n_experts`` experts (MLPs of ``cfg.hidden``), a gate and a tower per task.

    Task ``t``'s output is ``tower_t(sum_e g_t(z)[e] * expert_e(z))`` with
    ``g_t(z) = softmax(W_t z + b_t)``.

    Sharing: the experts are shared (every task's gate mixes all of them, so every
    task's output depends on each); a task's gate and tower are its own.

    Args:
        in_dim: Width of the encoded input.
        out_dims: Output units per task, in task order.
        cfg: Expert count and layers (``n_experts``, ``hidden``, ...) and towers (``head_hidden``).
    """

    def __init__(self, in_dim: int, out_dims: dict[str, int], cfg: ModelConfig) -> None:
        super().__init__(in_dim, out_dims, cfg)
        blocks = [mlp(in_dim, cfg) for _ in range(cfg.n_experts)]
        self.experts = nn.ModuleList(block for block, _ in blocks)
        width = blocks[0][1]
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, cfg.n_experts) for t in out_dims})
        self.heads = nn.ModuleDict({t: tower(width, n, cfg) for t, n in out_dims.items()})

    def gate_weights(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's softmax weights over the experts: ``{task: (B, n_experts)}``."""
        return {t: gate(z).softmax(dim=-1) for t, gate in self.gates.items()}

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z`` (B, in_dim) -> experts (B, E, H) -> one gated mix (B, H) per task -> its tower."""
        experts = torch.stack([e(z) for e in self.experts], dim=1)  # (B, E, H)
        out = {}
        for t, w in self.gate_weights(z).items():  # w: (B, E)
            out[t] = self.heads[t](torch.einsum("be,beh->bh", w, experts))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' parameters."""
        return list(self.experts.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s gate and tower."""
        return [*self.gates[task].parameters(), *self.heads[task].parameters()]
