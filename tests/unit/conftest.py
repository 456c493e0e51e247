"""Shared fixtures of the unit tests: small frames and configs that train in well under a second."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_core.config import DataConfig, ExperimentConfig, load_config


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Train on one thread: the models are tiny, and the CPUs are shared with other jobs.

    Under contention, two OpenMP threads made a 30-epoch fit 10-20x slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """A small tabular frame with one task of each type and an id column.

    ``rid`` is a unique numeric id (a feature, so splits can be traced back to rows);
    ``yb`` is an imbalanced binary target (about 30 % ones), ``ym`` has three classes,
    ``yr`` is a regression target driven by ``x1``.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    return pd.DataFrame(
        {
            "rid": np.arange(n, dtype=float),
            "x1": x1,
            "x2": rng.normal(loc=5.0, scale=2.0, size=n),
            "cat": rng.choice(["red", "green", "blue"], size=n),
            "yb": (rng.random(n) < 0.3).astype(int),
            "ym": rng.choice(["a", "b", "c"], size=n),
            "yr": 3.0 * x1 + rng.normal(scale=0.1, size=n),
        }
    )


TASKS = [
    {"name": "bin", "column": "yb", "type": "binary"},
    {"name": "multi", "column": "ym", "type": "multiclass"},
    {"name": "reg", "column": "yr", "type": "regression"},
]


@pytest.fixture
def file_config() -> Callable[..., DataConfig]:
    """Factory of a data config reading a file, by default with the three tasks of :func:`frame`."""

    def make(path: Path, tasks: list[dict] | None = None, **kw) -> DataConfig:
        return DataConfig(source="file", path=str(path), tasks=tasks or TASKS, **kw)

    return make


@pytest.fixture
def make_frame() -> Callable[..., pd.DataFrame]:
    """Factory of :func:`frame`."""
    return frame


@pytest.fixture
def tiny_synthetic() -> Callable[..., ExperimentConfig]:
    """Factory of a small ``default.yaml`` (regression + binary) that trains in ~0.1 s."""

    def make(*overrides: str) -> ExperimentConfig:
        base = [
            "data.synthetic.n_rows=300",
            "data.synthetic.dim=8",
            "model.hidden=[16]",
            "train.epochs=3",
            "train.batch_size=64",
            "train.device=cpu",
        ]
        return load_config("default", [*base, *overrides])

    return make
