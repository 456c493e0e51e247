"""The multi-task model: an input encoder, then an architecture with a tower per task.

The model owns its configuration, the way nanoGPT's checkpoints carry
``model_args``: a :class:`ModelSpec` holds everything needed to rebuild it (the
``model`` and ``features`` config sections plus the sizes learned from the data)
and travels with the saved weights, so serving rebuilds any architecture from
the spec alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mtl_core.arch import ARCHS
from mtl_core.config import FeaturesConfig, ModelConfig
from mtl_core.inputs import InputEncoder, check_embedding_memory, piecewise_linear_bins


@dataclass
class ModelSpec:
    """Everything that rebuilds a :class:`MultiTaskModel`; JSON-ready.

    Attributes:
        model: The ``model`` config section.
        features: The ``features`` config section.
        n_numeric: Leading numeric columns of the dense input.
        n_dense: Width of the dense input.
        cardinalities: Codes per embedded categorical column (index 0 reserved).
        embedding_dims: Embedding width per embedded categorical column.
        out_dims: Output units per task, in task order.
        bins: Piecewise-linear bin edges per numeric column, when used.
    """

    model: dict[str, Any]
    features: dict[str, Any]
    n_numeric: int
    n_dense: int
    cardinalities: list[int]
    embedding_dims: list[int]
    out_dims: dict[str, int]
    bins: list[list[float]] | None = field(default=None, repr=False)

    def to_json(self) -> str:
        """The spec as JSON text."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Parse :meth:`to_json`'s output."""
        return cls(**json.loads(text))


class MultiTaskModel(nn.Module):
    """Input encoder (:mod:`mtl_core.inputs`) plus an architecture (:mod:`mtl_core.arch`).

    Args:
        spec: What to build; kept as ``self.spec``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        cfg = ModelConfig.model_validate(spec.model)
        feats = FeaturesConfig.model_validate(spec.features)
        self.encoder = InputEncoder(
            spec.n_numeric,
            spec.n_dense,
            spec.cardinalities,
            spec.embedding_dims,
            numeric_embedding=feats.numeric_embedding,
            numeric_embedding_dim=feats.numeric_embedding_dim,
            n_frequencies=feats.n_frequencies,
            frequency_scale=feats.frequency_scale,
            bins=spec.bins,
        )
        self.body = ARCHS.lookup(cfg.arch)(self.encoder.out_dim, spec.out_dims, cfg)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Dense inputs ``x`` (B, n_dense) and codes ``c`` (B, n_cat) -> ``{task: (B, out)}``."""
        return self.body(self.encoder(x, c))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task depends on: the encoder's and the architecture's shared ones."""
        return [*self.encoder.parameters(), *self.body.shared_parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` depends on."""
        return self.body.task_parameters(task)


def model_spec(model: ModelConfig, features: FeaturesConfig, data) -> ModelSpec:
    """The spec of a model for ``data`` (a :class:`~mtl_core.data.PreparedData`).

    Piecewise-linear bins are computed from the training split here.

    Raises:
        DataError: The categorical embedding tables would not fit in memory.
    """
    pre = data.preprocessor
    cards, dims = pre.cardinalities, pre.embedding_dims
    if cards:
        check_embedding_memory(pre.categorical, cards, dims)
    bins = None
    if features.numeric_embedding == "piecewise_linear" and pre.n_numeric:
        bins = piecewise_linear_bins(data.splits["train"].X[:, : pre.n_numeric], features.n_bins)
    return ModelSpec(
        model=model.model_dump(mode="json"),
        features=features.model_dump(mode="json"),
        n_numeric=pre.n_numeric,
        n_dense=pre.n_dense,
        cardinalities=cards,
        embedding_dims=dims,
        out_dims=data.out_dims,
        bins=bins,
    )


def build_model(spec: ModelSpec, seed: int) -> MultiTaskModel:
    """A seeded :class:`MultiTaskModel`."""
    torch.manual_seed(seed)
    return MultiTaskModel(spec)
