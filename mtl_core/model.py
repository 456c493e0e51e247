"""The multi-task network: one shared MLP trunk, one head per task.

Hard parameter sharing (Caruana, 1997): every task reads the same trunk
representation; only the heads are task-specific.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.config import ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,  # with one hidden layer: the seed's single shared Linear layer
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def _norm(kind: str, width: int) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return None


class MultiTaskNet(nn.Module):
    """Shared trunk plus per-task heads.

    Args:
        in_dim: Input features.
        out_dims: Output units per task, keyed by task name.
        hidden: Trunk layer widths; ``[]`` makes the trunk the identity.
        activation: A key of :data:`ACTIVATIONS`.
        dropout: Dropout after each trunk layer.
        norm: ``none``, ``batch`` or ``layer`` normalisation after each trunk layer.
        head_hidden: Hidden units of each head; 0 gives linear heads.
    """

    def __init__(
        self,
        in_dim: int,
        out_dims: dict[str, int],
        hidden: list[int] | tuple[int, ...] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
        head_hidden: int = 0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise KeyError(f"unknown activation '{activation}'; known: {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if (n := _norm(norm, h)) is not None:
                layers.append(n)
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict()
        for name, out in out_dims.items():
            if head_hidden:
                self.heads[name] = nn.Sequential(
                    nn.Linear(width, head_hidden),
                    ACTIVATIONS[activation](),
                    nn.Linear(head_hidden, out),
                )
            else:
                self.heads[name] = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map inputs (B, in_dim) to ``{task: outputs (B, out_dim)}``."""
        z = self.trunk(x)  # (B, width)
        return {name: head(z) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk, shared by all tasks."""
        return list(self.trunk.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters of one task's head."""
        return list(self.heads[task].parameters())


def build_model(cfg: ModelConfig, in_dim: int, out_dims: dict[str, int], seed: int) -> MultiTaskNet:
    """Build a seeded :class:`MultiTaskNet` from a model config section."""
    torch.manual_seed(seed)
    return MultiTaskNet(
        in_dim,
        out_dims,
        hidden=cfg.hidden,
        activation=cfg.activation,
        dropout=cfg.dropout,
        norm=cfg.norm,
        head_hidden=cfg.head_hidden,
    )
