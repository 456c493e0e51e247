"""The architecture seam: a module mapping encoded inputs to ``{task: outputs}``.

An architecture is one :class:`Architecture` subclass in one file, registered
under the name ``model.arch`` selects. It is built from the encoded input width,
the output size of each task, and the model config, and it says which of its
parameters every task shares (:meth:`Architecture.shared_parameters`), which is
what the L1/L2 penalty's ``trunk`` scope and gradient-based weighting methods act on.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.config import ModelConfig
from mtl_core.registry import Registry

ARCHS: Registry[type[Architecture]] = Registry("architecture", "model.arch")

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,  # with one hidden layer: the seed's single shared Linear layer
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class Architecture(nn.Module):
    """Maps encoded inputs (B, in_dim) to ``{task: outputs (B, out_dim)}``.

    Args:
        in_dim: Width of the encoded input.
        out_dims: Output units per task, in task order.
        cfg: The model config (sizes, activation, dropout, norm, towers).
    """

    def __init__(self, in_dim: int, out_dims: dict[str, int], cfg: ModelConfig) -> None:
        super().__init__()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z`` (B, in_dim) -> ``{task: (B, out_dim)}``."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's output depends on."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task``'s output depends on."""
        raise NotImplementedError


def _norm(kind: str, width: int) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return None


def mlp(
    in_dim: int, cfg: ModelConfig, hidden: list[int] | None = None
) -> tuple[nn.Sequential, int]:
    """Linear -> norm -> activation -> dropout per layer of ``hidden`` (default ``cfg.hidden``).

    Returns:
        The block and its output width; ``hidden=[]`` gives the identity.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for h in cfg.hidden if hidden is None else hidden:
        layers.append(nn.Linear(width, h))
        if (n := _norm(cfg.norm, h)) is not None:
            layers.append(n)
        layers.append(ACTIVATIONS[cfg.activation]())
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = h
    return nn.Sequential(*layers), width


def tower(in_dim: int, out_dim: int, cfg: ModelConfig) -> nn.Module:
    """A task's tower: linear when ``cfg.head_hidden`` is 0, else one hidden layer."""
    if not cfg.head_hidden:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, cfg.head_hidden),
        ACTIVATIONS[cfg.activation](),
        nn.Linear(cfg.head_hidden, out_dim),
    )
