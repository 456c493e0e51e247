"""Metrics: key names, agreement with scikit-learn on masked rows, and delta_m's sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mtl_core.config import load_config
from mtl_core.data import load_penguins, prepare
from mtl_core.losses import build_loss
from mtl_core.metrics import delta_m, evaluate, task_loss, task_metrics
from mtl_core.tasks import sigmoid, softmax
from mtl_core.tasks.binary import BinaryTask
from mtl_core.tasks.regression import RegressionTask
from mtl_core.train import DeviceSplit, predict_outputs, split_losses, train_from_config


@pytest.fixture(scope="module")
def penguins():
    """A briefly trained penguins model: not perfect, so the metrics are not trivial."""
    cfg = load_config("penguins", ["train.epochs=8", "train.device=cpu"])
    data = prepare(cfg.data, cfg.features)
    model, _ = train_from_config(cfg, data)
    return data, model, build_loss(cfg.loss, data.tasks)


def test_keys_follow_split_task_metric(penguins):
    data, model, _ = penguins
    m = evaluate(model, data, device="cpu")
    expected = {"val/objective", "test/objective"}
    for split in ("val", "test"):
        expected |= {f"{split}/species/{k}" for k in ("accuracy", "macro_f1")}
        expected |= {f"{split}/body_mass/{k}" for k in ("rmse", "mae", "r2")}
        expected |= {f"{split}/sex/{k}" for k in ("accuracy", "log_loss", "auc")}
    assert set(m) == expected
    assert set(evaluate(model, data, splits=("train",), device="cpu")) == {
        k.replace("val/", "train/") for k in expected if k.startswith("val/")
    }


@pytest.mark.parametrize("split", ["val", "test"])
def test_metrics_agree_with_sklearn(penguins, split):
    data, model, _ = penguins
    m = evaluate(model, data, splits=(split,), device="cpu")
    s = data.splits[split]
    out = predict_outputs(model, s.X, s.C, device="cpu")

    y = s.y["species"]
    pred = out["species"].argmax(axis=1)
    assert m[f"{split}/species/accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m[f"{split}/species/macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))

    # sex is missing for some penguins: the metrics use the labelled rows only.
    y = s.y["sex"]
    keep = ~np.isnan(y)
    p = sigmoid(out["sex"][keep, 0].astype(np.float64))
    assert m[f"{split}/sex/auc"] == pytest.approx(skm.roc_auc_score(y[keep], p))
    assert m[f"{split}/sex/accuracy"] == pytest.approx(skm.accuracy_score(y[keep], p >= 0.5))
    assert m[f"{split}/sex/log_loss"] == pytest.approx(skm.log_loss(y[keep], p), rel=1e-5)

    # Regression metrics are in grams, not in standardised units.
    spec = next(t for t in data.tasks if t.name == "body_mass")
    y = s.y["body_mass"]
    keep = ~np.isnan(y)
    grams = y[keep] * spec.std + spec.mean
    pred = out["body_mass"][keep, 0] * spec.std + spec.mean
    assert m[f"{split}/body_mass/rmse"] == pytest.approx(skm.root_mean_squared_error(grams, pred))
    assert m[f"{split}/body_mass/mae"] == pytest.approx(skm.mean_absolute_error(grams, pred))
    assert m[f"{split}/body_mass/r2"] == pytest.approx(skm.r2_score(grams, pred), rel=1e-5)
    raw = set(load_penguins()["body_mass_g"].dropna())
    assert {round(g) for g in grams} <= raw


def test_objective_matches_the_training_loop(penguins):
    data, model, loss = penguins
    m = evaluate(model, data, splits=("val",), device="cpu")
    val = DeviceSplit.from_split(data.splits["val"], torch.device("cpu"))
    objective, per_task = split_losses(model, val, loss)
    assert m["val/objective"] == pytest.approx(objective, rel=1e-5)
    # And by hand: the unweighted mean of the three task losses.
    s = data.splits["val"]
    out = predict_outputs(model, s.X, s.C, device="cpu")
    sp = s.y["species"].astype(int)
    ce = -np.log(softmax(out["species"].astype(np.float64))[np.arange(len(sp)), sp]).mean()
    keep = ~np.isnan(s.y["sex"])
    bce = skm.log_loss(s.y["sex"][keep], sigmoid(out["sex"][keep, 0].astype(np.float64)))
    keep = ~np.isnan(s.y["body_mass"])
    mse = np.mean((out["body_mass"][keep, 0] - s.y["body_mass"][keep]) ** 2)
    assert per_task == pytest.approx({"species": ce, "sex": bce, "body_mass": mse}, rel=1e-4)
    assert objective == pytest.approx((ce + bce + mse) / 3, rel=1e-4)


def test_task_without_labels_has_no_metrics():
    spec = BinaryTask("t", "c", classes=[0, 1])
    assert task_metrics(spec, np.full(4, np.nan), np.zeros((4, 1))) == {}
    assert np.isnan(task_loss(spec, np.full(4, np.nan, dtype=np.float32), np.zeros((4, 1))))


def test_task_loss_is_the_masked_training_loss():
    spec = BinaryTask("t", "c", classes=[0, 1])
    y = np.array([1.0, np.nan, 0.0, 1.0], dtype=np.float32)
    scores = np.array([[2.0], [-50.0], [-1.0], [0.0]], dtype=np.float32)
    keep = ~np.isnan(y)
    expected = skm.log_loss(y[keep], sigmoid(scores[keep, 0].astype(np.float64)))
    assert task_loss(spec, y, scores) == pytest.approx(expected, rel=1e-6)
    assert task_metrics(spec, y, scores)["log_loss"] == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- delta_m

TASKS = [
    RegressionTask("mass", "m"),  # rmse and mae: lower is better
    BinaryTask("sex", "s", classes=[0, 1]),  # auc, accuracy: higher; log_loss: lower
]
STL = {
    "test/mass/rmse": 100.0,
    "test/mass/mae": 80.0,
    "test/mass/r2": 0.5,
    "test/sex/auc": 0.80,
    "test/sex/accuracy": 0.75,
    "test/sex/log_loss": 0.50,
}


def test_delta_m_is_positive_when_sharing_helps():
    mtl = {
        "test/mass/rmse": 90.0,  # 10 % lower: +10
        "test/mass/mae": 60.0,  # 25 % lower: +25
        "test/mass/r2": 0.1,  # not a delta_m metric for regression: ignored
        "test/sex/auc": 0.88,  # 10 % higher: +10
        "test/sex/accuracy": 0.75,  # unchanged: 0
        "test/sex/log_loss": 0.45,  # 10 % lower: +10
    }
    # mass: (10 + 25) / 2 = 17.5; sex: (10 + 0 + 10) / 3 = 6.667; mean = 12.083
    assert delta_m(mtl, STL, TASKS) == pytest.approx((17.5 + 20 / 3) / 2)


def test_delta_m_is_negative_when_sharing_hurts():
    mtl = dict(STL)
    mtl["test/mass/rmse"] = 120.0  # 20 % higher, worse: -20 -> mass -10 (mae unchanged)
    mtl["test/sex/auc"] = 0.72  # 10 % lower, worse: -10 -> sex -10 / 3
    assert delta_m(mtl, STL, TASKS) == pytest.approx((-10 - 10 / 3) / 2)
    assert delta_m(STL, STL, TASKS) == 0.0


def test_delta_m_uses_the_requested_split_and_skips_missing_metrics():
    val = {k.replace("test/", "val/"): v for k, v in STL.items()}
    better = dict(val, **{"val/mass/rmse": 50.0})
    assert delta_m(better, val, TASKS, split="val") == pytest.approx(50.0 / 2 / 2)
    assert np.isnan(delta_m(better, val, TASKS))  # no test/ keys at all
    no_auc = {k: v for k, v in STL.items() if k != "test/sex/auc"}
    mtl = dict(STL, **{"test/sex/accuracy": 0.90})  # +20 on accuracy, auc not comparable
    assert delta_m(mtl, no_auc, TASKS) == pytest.approx((0 + 20 / 2) / 2)
