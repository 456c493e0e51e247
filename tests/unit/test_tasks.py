"""Task types: every registered type has a loss, an output size and metrics that agree."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_core.config import TaskConfig
from mtl_core.errors import ConfigError, DataError
from mtl_core.tasks import (
    TASK_TYPES,
    Task,
    metric_direction,
    sigmoid,
    softmax,
    task_from_dict,
)
from mtl_core.tasks.binary import BinaryTask
from mtl_core.tasks.multiclass import MulticlassTask
from mtl_core.tasks.regression import RegressionTask

N, K = 12, 3


def _task(name: str) -> Task:
    """A fitted task of each type: K classes for multiclass, the identity scaling for regression."""
    if name == "binary":
        return BinaryTask("t", "c", classes=[0, 1])
    if name == "multiclass":
        return MulticlassTask("t", "c", classes=list(range(K)))
    return RegressionTask("t", "c", mean=0.0, std=1.0)


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
    assert set(TASK_TYPES) == {"binary", "multiclass", "regression"}
    assert TASK_TYPES["binary"] is BinaryTask
    assert TASK_TYPES["multiclass"] is MulticlassTask
    assert TASK_TYPES["regression"] is RegressionTask


@pytest.mark.parametrize("name", sorted(TASK_TYPES))
def test_type_is_consistent(name):
    task = _task(name)
    assert isinstance(task, TASK_TYPES.lookup(name))
    assert task.type == name
    assert task.out_dim == (K if name == "multiclass" else 1)
    # Every metric has a direction, and delta_m only averages metrics the type reports.
    y, scores = _perfect(name)
    metrics = task.metrics(y, scores)
    assert set(metrics) <= set(task.directions)
    assert set(task.delta_m_metrics) <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    # Perfect outputs get the best possible values, and a near-zero loss per row.
    for m, v in metrics.items():
        if m in ("accuracy", "auc", "macro_f1", "r2"):
            assert v == pytest.approx(1.0)
        else:
            assert v == pytest.approx(0.0, abs=1e-6)
    per_row = task.loss(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(y).float())
    assert per_row.shape == (N,)
    assert float(per_row.max()) < 1e-6


@pytest.mark.parametrize("name", sorted(TASK_TYPES))
def test_uninformative_outputs_score_at_chance(name):
    task = _task(name)
    y, _ = _perfect(name)
    scores = np.zeros((N, task.out_dim))
    per_row = task.loss(torch.zeros(N, task.out_dim), torch.as_tensor(y).float())
    expected = {"binary": math.log(2), "multiclass": math.log(K)}
    if name in expected:
        assert per_row.mean().item() == pytest.approx(expected[name], rel=1e-6)
    else:
        assert per_row.mean().item() == pytest.approx(float(np.mean(y**2)), rel=1e-6)
    if name == "binary":
        assert task.metrics(y, scores)["auc"] == pytest.approx(0.5)


def test_binary_metrics_leave_out_auc_on_one_class():
    m = _task("binary").metrics(np.ones(5), np.full((5, 1), 2.0))
    assert "auc" not in m
    assert m["accuracy"] == 1.0


def test_unknown_type_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        TASK_TYPES.lookup("ordinal")
    assert "'ordinal'" in str(info.value)
    for name in TASK_TYPES:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="ordinal"):
        task_from_dict({"type": "ordinal", "name": "t", "column": "c"})


@dataclass
class _CountTask(Task):
    """A task type defined outside the package: one class is all it takes."""

    type = "count"
    directions = {"mean_deviance": False}
    delta_m_metrics = ("mean_deviance",)

    @classmethod
    def from_column(cls, name, column, values, source):
        return cls(name, column)

    @property
    def out_dim(self) -> int:
        return 1

    def encode(self, values):
        return values.to_numpy(dtype=np.float32)

    def decode(self, scores):
        return {self.name: np.exp(scores[:, 0])}

    def loss(self, outputs, targets):
        return torch.nn.functional.poisson_nll_loss(outputs[:, 0], targets, reduction="none")

    def metrics(self, y, scores):
        return {"mean_deviance": float(np.mean(np.exp(scores[:, 0]) - y * scores[:, 0]))}


@pytest.fixture
def count_type():
    TASK_TYPES.register("count")(_CountTask)
    yield _CountTask
    del TASK_TYPES["count"]


def test_register_adds_a_type(count_type):
    assert TASK_TYPES.lookup("count") is count_type
    # The config, the JSON round trip and the metric directions all see the new type.
    assert TaskConfig(name="visits", column="n", type="count").type == "count"
    task = count_type.from_column("visits", "n", pd.Series([1, 2]), "mem")
    assert task_from_dict(json.loads(json.dumps(task.to_dict()))) == task
    assert metric_direction("mean_deviance") is False
    per_row = task.loss(torch.zeros(3, 1), torch.tensor([0.0, 1.0, 2.0]))
    assert per_row.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_sigmoid_and_softmax():
    np.testing.assert_allclose(sigmoid(np.array([0.0, 100.0, -100.0])), [0.5, 1.0, 0.0], atol=1e-12)
    p = softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]))  # large inputs stay finite
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75]])


# --------------------------------------------------------------------------- every registered type

# A raw target column per type, with a missing label: a new type must add its own sample here.
SAMPLES = {
    "binary": pd.Series(["no", "yes", None, "yes", "no", "no", "yes", "no"]),
    "multiclass": pd.Series(["b", "a", "c", None, "c", "a", "b", "c"]),
    "regression": pd.Series([1200.0, 3400.0, np.nan, 2800.0, 5000.0, 4100.0, 3900.0, 2500.0]),
}


def _fitted(name: str) -> tuple[Task, pd.Series]:
    values = SAMPLES[name]
    task = TASK_TYPES.lookup(name).from_column("t", "col", values, "mem")
    task.fit_train(values)
    return task, values


def _perfect_scores(task: Task, y: np.ndarray) -> np.ndarray:
    """Model outputs (N, out_dim) whose predictions are exactly the encoded targets ``y``."""
    if task.type == "regression":
        return y[:, None].astype(np.float64)
    if task.type == "binary":
        return np.where(y == 1, 30.0, -30.0)[:, None]
    return np.eye(task.out_dim)[y.astype(int)] * 30.0


def test_every_registered_type_has_a_sample():
    assert set(SAMPLES) == set(TASK_TYPES)


@pytest.mark.parametrize("name", sorted(TASK_TYPES))
def test_to_dict_round_trips_through_json(name):
    task, _ = _fitted(name)
    state = task.to_dict()
    assert state["type"] == name
    assert (state["name"], state["column"]) == ("t", "col")
    again = task_from_dict(json.loads(json.dumps(state)))
    assert type(again) is type(task)
    assert again == task
    assert again.to_dict() == state
    assert again.out_dim == task.out_dim
    np.testing.assert_array_equal(again.encode(SAMPLES[name]), task.encode(SAMPLES[name]))


@pytest.mark.parametrize("name", sorted(TASK_TYPES))
def test_decode_inverts_encode(name):
    task, values = _fitted(name)
    y = task.encode(values)
    assert y.dtype == np.float32 and y.shape == (len(values),)
    missing = values.isna().to_numpy()
    assert np.isnan(y[missing]).all() and not np.isnan(y[~missing]).any()
    keep = ~missing
    decoded = task.decode(_perfect_scores(task, y[keep]))
    assert task.name in decoded
    assert all(len(col) == keep.sum() for col in decoded.values())
    back = decoded[task.name]
    if np.issubdtype(np.asarray(values).dtype, np.number):
        np.testing.assert_allclose(back.astype(float), values[keep].to_numpy(), rtol=1e-5)
    else:
        assert list(back) == list(values[keep])


@pytest.mark.parametrize("name", sorted(TASK_TYPES))
def test_metric_directions_cover_every_metric_reported(name):
    task, values = _fitted(name)
    y = task.encode(values)
    y = y[~np.isnan(y)]
    rng = np.random.default_rng(0)
    for scores in (_perfect_scores(task, y), rng.normal(size=(len(y), task.out_dim))):
        metrics = task.metrics(y, scores)
        assert metrics
        assert set(metrics) <= set(task.directions)
        for m in metrics:
            assert metric_direction(m) is task.directions[m]
    assert set(task.delta_m_metrics) <= set(task.directions)


def test_a_metric_has_one_direction_across_types():
    seen: dict[str, bool] = {}
    for cls in TASK_TYPES.values():
        for m, higher in cls.directions.items():
            assert seen.setdefault(m, higher) is higher, m
    with pytest.raises(KeyError, match="nope"):
        metric_direction("nope")


@pytest.mark.parametrize("name", ["binary", "multiclass"])
def test_classification_stratifies_with_missing_as_a_stratum(name):
    task, values = _fitted(name)
    labels = task.stratify_labels(values)
    expected = {"binary": ["no", "yes", "<missing>"], "multiclass": ["b", "a", "c", "<missing>"]}
    assert labels.tolist()[: len(expected[name])] == expected[name]
    assert _fitted("regression")[0].stratify_labels(SAMPLES["regression"]) is None


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        ("binary", pd.Series(["a", "a", None]), "1 class(es)"),
        ("multiclass", pd.Series([3, 3, 3]), "1 class(es)"),
        ("binary", pd.Series(["a", "b", "c"]), "use type 'multiclass'"),
        ("regression", pd.Series([1.0, "heavy", 2.0], dtype=object), "'heavy'"),
    ],
)
def test_unusable_target_is_a_data_error_naming_the_column(name, values, expected):
    with pytest.raises(DataError) as info:
        TASK_TYPES.lookup(name).from_column("t", "col", values, "file.csv")
    msg = str(info.value)
    assert "file.csv" in msg and "'col'" in msg and "'t'" in msg
    assert expected in msg


def test_regression_scales_on_train_and_survives_a_constant_target():
    task, _ = _fitted("regression")
    present = SAMPLES["regression"].dropna()
    assert task.mean == pytest.approx(present.mean())
    assert task.std == pytest.approx(present.std())
    flat = RegressionTask("t", "c")
    flat.fit_train(pd.Series([2.0, 2.0, 2.0]))
    assert (flat.mean, flat.std) == (2.0, 1.0)
    np.testing.assert_array_equal(flat.encode(pd.Series([2.0, 3.0])), [0.0, 1.0])
