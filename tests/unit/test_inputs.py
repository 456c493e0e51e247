"""Input encoder: output widths per representation, numeric bins, embedding memory checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mtl_core import inputs
from mtl_core.errors import DataError
from mtl_core.inputs import (
    BYTES_PER_TRAINED_PARAM,
    EMBEDDING_MAX_DIM,
    InputEncoder,
    check_embedding_memory,
    embedding_dim,
    piecewise_linear_bins,
)

B, N_NUMERIC, D = 7, 3, 4


def test_embedding_dim_rule():
    assert embedding_dim(10, fixed=5) == 5
    assert embedding_dim(1) == 2  # round(1.6)
    assert embedding_dim(3) == 3
    assert embedding_dim(100) == round(1.6 * 100**0.56) == 21
    assert embedding_dim(50_000) == EMBEDDING_MAX_DIM == 64
    widths = [embedding_dim(n) for n in range(1, 5000, 37)]
    assert widths == sorted(widths)  # never narrower for more levels


def _bins(x: np.ndarray) -> list[list[float]]:
    return piecewise_linear_bins(x, 8)


@pytest.mark.parametrize("numeric_embedding", ["none", "periodic", "piecewise_linear"])
@pytest.mark.parametrize("n_onehot", [0, 2])
@pytest.mark.parametrize("categorical", [False, True], ids=["no-tables", "tables"])
def test_output_width_is_out_dim(numeric_embedding, n_onehot, categorical):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_num = rng.normal(size=(50, N_NUMERIC)).astype(np.float32)
    cards, dims = ([4, 10], [3, 5]) if categorical else ([], [])
    encoder = InputEncoder(
        N_NUMERIC,
        N_NUMERIC + n_onehot,
        cards,
        dims,
        numeric_embedding=numeric_embedding,
        numeric_embedding_dim=D,
        n_frequencies=6,
        bins=_bins(x_num) if numeric_embedding == "piecewise_linear" else None,
    )
    per_numeric = 1 if numeric_embedding == "none" else D
    assert encoder.out_dim == N_NUMERIC * per_numeric + n_onehot + sum(dims)

    x = torch.cat(
        [torch.as_tensor(x_num[:B]), torch.eye(max(n_onehot, 1))[torch.arange(B) % 2, :n_onehot]],
        dim=1,
    )
    c = torch.stack([torch.arange(B) % n for n in cards], dim=1) if cards else None
    z = encoder(x, c)
    assert z.shape == (B, encoder.out_dim)
    assert torch.isfinite(z).all()
    # One-hot columns pass through unchanged, right after the numeric part...
    start = N_NUMERIC * per_numeric
    torch.testing.assert_close(z[:, start : start + n_onehot], x[:, N_NUMERIC:])
    if numeric_embedding == "none":
        torch.testing.assert_close(z[:, :N_NUMERIC], x[:, :N_NUMERIC])
    # ...and each categorical column's embedding follows, in order.
    start += n_onehot
    for j, table in enumerate(encoder.tables):
        torch.testing.assert_close(z[:, start : start + dims[j]], table.weight[c[:, j]])
        start += dims[j]
    assert start == encoder.out_dim


def test_embedding_tables_reserve_code_zero_for_unseen():
    encoder = InputEncoder(1, 1, [3], [2])
    assert encoder.tables[0].num_embeddings == 3
    z = encoder(torch.zeros(2, 1), torch.tensor([[0], [2]]))
    torch.testing.assert_close(z[0, 1:], encoder.tables[0].weight[0])


def test_piecewise_linear_needs_bins_for_every_numeric_column():
    with pytest.raises(ValueError, match="bins for 3 numeric columns"):
        InputEncoder(3, 3, [], [], numeric_embedding="piecewise_linear")
    with pytest.raises(ValueError, match="bins for 3 numeric columns"):
        InputEncoder(3, 3, [], [], numeric_embedding="piecewise_linear", bins=[[0.0, 1.0]])


def test_numeric_embeddings_without_numeric_columns_pass_through():
    encoder = InputEncoder(0, 2, [5], [3], numeric_embedding="periodic")
    assert encoder.numeric is None
    assert encoder.out_dim == 2 + 3
    assert encoder(torch.ones(4, 2), torch.ones(4, 1, dtype=torch.long)).shape == (4, 5)


# --------------------------------------------------------------------------- bins


def test_constant_column_gets_a_single_bin():
    rng = np.random.default_rng(0)
    x = np.column_stack([np.full(50, 3.0), rng.normal(size=50), rng.integers(0, 2, 50)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a one-bin column is expected, not worth a warning
        bins = piecewise_linear_bins(x.astype(np.float32), 8)
    assert bins[0] == [2.5, 3.5]
    assert len(bins[1]) == 8 + 1
    assert bins[1] == sorted(bins[1])
    assert bins[1][0] == pytest.approx(x[:, 1].min()) and bins[1][-1] == pytest.approx(
        x[:, 1].max()
    )
    assert len(bins[2]) == 2  # two distinct values: one bin
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks out of the encoder
        encoder = InputEncoder(3, 3, [], [], numeric_embedding="piecewise_linear", bins=bins)
    z = encoder(torch.as_tensor(x[:5], dtype=torch.float32))
    assert z.shape == (5, encoder.out_dim) and torch.isfinite(z).all()


def test_bins_on_very_few_rows():
    assert piecewise_linear_bins(np.array([[1.0], [2.0]], dtype=np.float32), 32) == [[0.5, 1.5]]
    bins = piecewise_linear_bins(np.arange(10, dtype=np.float32)[:, None], 32)
    assert len(bins[0]) <= 10  # no more bins than the rows allow


# --------------------------------------------------------------------------- memory


def test_embedding_memory_refusal_names_the_biggest_column():
    columns, cards, dims = ["small", "huge", "medium"], [11, 1_000_001, 5_001], [4, 64, 32]
    need = sum(n * d * BYTES_PER_TRAINED_PARAM for n, d in zip(cards, dims, strict=True))
    check_embedding_memory(columns, cards, dims, budget=need)  # exactly fits
    with pytest.raises(DataError) as info:
        check_embedding_memory(columns, cards, dims, budget=need - 1)
    msg = str(info.value)
    assert "'huge'" in msg
    assert "1,000,000 levels" in msg
    assert "features.categorical=embedding" in msg
    assert "\n" not in msg


def test_biggest_column_is_by_size_not_levels():
    with pytest.raises(DataError, match="'wide'"):
        check_embedding_memory(["many", "wide"], [1000, 600], [2, 64], budget=1)


def test_embedding_memory_defaults_to_the_machine_budget(monkeypatch):
    assert inputs.memory_budget_bytes() > 0
    monkeypatch.setattr(inputs, "memory_budget_bytes", lambda: 100)
    with pytest.raises(DataError, match="'c'"):
        check_embedding_memory(["c"], [10], [2])  # 320 bytes
    check_embedding_memory(["c"], [2], [2])  # 64 bytes
