"""The torch side of the input representation: embeddings of numeric and categorical columns.

:mod:`mtl_core.preprocess` turns raw rows into a dense float matrix ``x`` (the
numeric columns first, then any one-hot columns) and an integer matrix ``c`` of
category codes. :class:`InputEncoder` turns both into the one flat vector an
architecture reads:

- numeric columns pass through, or go through the periodic or piecewise-linear
  embeddings of Gorishniy et al., "On Embeddings for Numerical Features in
  Tabular Deep Learning" (NeurIPS 2022), from the ``rtdl_num_embeddings`` package;
- one-hot columns pass through;
- each categorical column of codes has its own learned ``nn.Embedding`` table,
  whose index 0 is reserved for a category never seen in training.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from mtl_core.errors import DataError

EMBEDDING_MAX_DIM = 64
# Bytes one embedding parameter costs while training with AdamW: the weight, its
# gradient and two moment estimates, in float32.
BYTES_PER_TRAINED_PARAM = 16


def embedding_dim(n_levels: int, fixed: int | None = None) -> int:
    """Width of a categorical column's embedding.

    ``fixed`` when given; otherwise fastai's rule ``round(1.6 * n_levels ** 0.56)``
    (Howard & Gugger, 2020), capped at :data:`EMBEDDING_MAX_DIM`.
    """
    if fixed is not None:
        return fixed
    return int(min(EMBEDDING_MAX_DIM, max(1, round(1.6 * n_levels**0.56))))


def memory_budget_bytes() -> int:
    """The memory an input representation may take: a quarter of this machine's RAM."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return total // 4


def check_embedding_memory(
    columns: list[str], cardinalities: list[int], dims: list[int], budget: int | None = None
) -> None:
    """Refuse embedding tables that will not fit in memory, naming the largest column.

    Raises:
        DataError: The tables together need more than ``budget`` bytes to train.
    """
    budget = memory_budget_bytes() if budget is None else budget
    sizes = [n * d * BYTES_PER_TRAINED_PARAM for n, d in zip(cardinalities, dims, strict=True)]
    if sum(sizes) > budget:
        worst = int(np.argmax(sizes))
        raise DataError(
            f"features.categorical=embedding: column '{columns[worst]}' has "
            f"{cardinalities[worst] - 1:,} levels, and the embedding tables need "
            f"{sum(sizes) / 2**30:.1f} GiB to train, over the {budget / 2**30:.1f} GiB allowed; "
            "lower features.embedding_dim or group rare levels"
        )


def piecewise_linear_bins(x: np.ndarray, n_bins: int) -> list[list[float]]:
    """Quantile bin edges per numeric column, for piecewise-linear embeddings.

    ``rtdl_num_embeddings.compute_bins`` does the work; a column with a single
    value in training gets one bin around it instead of an error.

    Args:
        x: Training values of the numeric columns (N, n_numeric), finite.
        n_bins: Bins per column (fewer where a column has fewer distinct values).
    """
    from rtdl_num_embeddings import compute_bins

    n_bins = max(2, min(n_bins, len(x) - 1))
    edges = []
    for j in range(x.shape[1]):
        col = torch.as_tensor(x[:, j : j + 1], dtype=torch.float32)
        if len(col) < 3 or bool((col == col[0]).all()):
            v = float(col[0, 0]) if len(col) else 0.0
            edges.append([v - 0.5, v + 0.5])
        else:
            with warnings.catch_warnings():  # a two-valued column gets one bin: that is fine
                warnings.simplefilter("ignore", UserWarning)
                edges.append(compute_bins(col, n_bins=n_bins)[0].tolist())
    return edges


class InputEncoder(nn.Module):
    """Maps ``x`` (B, n_dense) and ``c`` (B, n_categorical) to one vector (B, out_dim).

    Args:
        n_numeric: Leading columns of ``x`` that are numeric (the rest are one-hot).
        n_dense: Width of ``x``.
        cardinalities: Codes per categorical column, reserved index 0 included.
        embedding_dims: Embedding width per categorical column.
        numeric_embedding: ``none``, ``periodic`` or ``piecewise_linear``.
        numeric_embedding_dim: Width of each numeric column's embedding.
        n_frequencies: Frequencies of the periodic embedding.
        frequency_scale: Initial scale σ of the periodic frequencies.
        bins: Bin edges per numeric column (piecewise-linear only).
    """

    def __init__(
        self,
        n_numeric: int,
        n_dense: int,
        cardinalities: list[int],
        embedding_dims: list[int],
        numeric_embedding: str = "none",
        numeric_embedding_dim: int = 16,
        n_frequencies: int = 32,
        frequency_scale: float = 0.1,
        bins: list[list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.n_numeric = n_numeric
        self.numeric: nn.Module | None = None
        numeric_width = n_numeric
        if n_numeric and numeric_embedding == "periodic":
            from rtdl_num_embeddings import PeriodicEmbeddings

            self.numeric = PeriodicEmbeddings(
                n_numeric,
                numeric_embedding_dim,
                n_frequencies=n_frequencies,
                frequency_init_scale=frequency_scale,
                lite=False,
            )
            numeric_width = n_numeric * numeric_embedding_dim
        elif n_numeric and numeric_embedding == "piecewise_linear":
            from rtdl_num_embeddings import PiecewiseLinearEmbeddings

            if bins is None or len(bins) != n_numeric:
                raise ValueError(f"piecewise_linear needs bins for {n_numeric} numeric columns")
            with warnings.catch_warnings():  # a one-bin column is fine: it is a scaled copy
                warnings.simplefilter("ignore", UserWarning)
                self.numeric = PiecewiseLinearEmbeddings(
                    [torch.tensor(b, dtype=torch.float32) for b in bins],
                    numeric_embedding_dim,
                    activation=False,
                    version="B",
                )
            numeric_width = n_numeric * numeric_embedding_dim
        self.tables = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(cardinalities, embedding_dims, strict=True)
        )
        self.out_dim = numeric_width + (n_dense - n_numeric) + sum(embedding_dims)
        # With nothing to embed the encoder is the identity; skip its Python on the hot path.
        self.passthrough = self.numeric is None and not cardinalities

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, n_dense) float, ``c`` (B, n_categorical) long -> (B, out_dim)."""
        if self.passthrough:
            return x
        parts = []
        if self.numeric is not None:
            parts.append(self.numeric(x[:, : self.n_numeric]).flatten(1))  # (B, n_num * d)
            parts.append(x[:, self.n_numeric :])
        else:
            parts.append(x)
        for j, table in enumerate(self.tables):
            parts.append(table(c[:, j]))  # (B, d_j)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
