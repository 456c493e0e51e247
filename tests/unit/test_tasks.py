"""Task-type registry: every kind has a loss, an output size and metrics that agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl_core import tasks
from mtl_core.tasks import HIGHER_IS_BETTER, TASK_KINDS, TaskKind, get_kind, sigmoid, softmax

N, K = 12, 3


def _perfect(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Targets and outputs that predict them (almost) exactly."""
    rng = np.random.default_rng(0)
    if kind == "regression":
        y = rng.normal(size=N)
        return y, y[:, None].copy()
    if kind == "binary":
        y = np.arange(N) % 2
        return y.astype(float), np.where(y == 1, 20.0, -20.0)[:, None]
    y = np.arange(N) % K
    return y.astype(float), np.eye(K)[y] * 20.0


def test_registry_holds_the_three_yaml_types():
    assert set(TASK_KINDS) == {"binary", "multiclass", "regression"}


@pytest.mark.parametrize("name", sorted(TASK_KINDS))
def test_kind_is_consistent(name):
    kind = get_kind(name)
    assert kind.name == name
    dim = kind.out_dim(K)
    assert dim == (K if name == "multiclass" else 1)
    # Every metric has a direction, and delta_m only averages metrics the kind reports.
    y, scores = _perfect(name)
    metrics = kind.metrics(y, scores)
    assert set(metrics) <= set(HIGHER_IS_BETTER)
    assert set(kind.delta_m_metrics) <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    # Perfect outputs get the best possible values, and a near-zero loss per row.
    for m, v in metrics.items():
        if m in ("accuracy", "auc", "macro_f1", "r2"):
            assert v == pytest.approx(1.0)
        else:
            assert v == pytest.approx(0.0, abs=1e-6)
    per_row = kind.loss(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(y).float())
    assert per_row.shape == (N,)
    assert float(per_row.max()) < 1e-6


@pytest.mark.parametrize("name", sorted(TASK_KINDS))
def test_uninformative_outputs_score_at_chance(name):
    kind = get_kind(name)
    y, _ = _perfect(name)
    scores = np.zeros((N, kind.out_dim(K)))
    per_row = kind.loss(torch.zeros(N, kind.out_dim(K)), torch.as_tensor(y).float())
    expected = {"binary": math.log(2), "multiclass": math.log(K)}
    if name in expected:
        assert per_row.mean().item() == pytest.approx(expected[name], rel=1e-6)
    else:
        assert per_row.mean().item() == pytest.approx(float(np.mean(y**2)), rel=1e-6)
    if name == "binary":
        assert kind.metrics(y, scores)["auc"] == pytest.approx(0.5)


def test_binary_metrics_leave_out_auc_on_one_class():
    m = get_kind("binary").metrics(np.ones(5), np.full((5, 1), 2.0))
    assert "auc" not in m
    assert m["accuracy"] == 1.0


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        get_kind("ordinal")
    for name in TASK_KINDS:
        assert name in str(info.value)


def test_register_adds_a_kind(monkeypatch):
    monkeypatch.setattr(tasks, "TASK_KINDS", dict(TASK_KINDS))
    kind = TaskKind("count", lambda n: 1, lambda o, y: (o[:, 0] - y) ** 2, lambda y, s: {}, ())
    assert tasks.register(kind) is kind
    assert get_kind("count") is kind


def test_sigmoid_and_softmax():
    np.testing.assert_allclose(sigmoid(np.array([0.0, 100.0, -100.0])), [0.5, 1.0, 0.0], atol=1e-12)
    p = softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]))  # large inputs stay finite
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75]])
