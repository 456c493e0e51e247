"""The loss: weighted task sum, masking of missing labels, and L1/L2 on weight matrices."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtl_core.config import LossConfig
from mtl_core.losses import MultiTaskLoss, build_loss, penalised_parameters
from mtl_core.model import MultiTaskNet

NAN = float("nan")
TYPES = {"a": "binary", "b": "regression", "c": "multiclass"}


def _outputs() -> dict[str, torch.Tensor]:
    return {
        "a": torch.tensor([[0.5], [-1.0], [2.0], [0.0]], requires_grad=True),
        "b": torch.tensor([[1.0], [0.0], [-1.0], [3.0]], requires_grad=True),
        "c": torch.tensor(
            [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 5.0]],
            requires_grad=True,
        ),
    }


def _bce(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _ce(scores: list[float], k: int) -> float:
    return -scores[k] + math.log(sum(math.exp(s) for s in scores))


def test_task_losses_and_weighted_sum_by_hand():
    out = _outputs()
    y = {
        "a": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "b": torch.tensor([0.0, 0.0, 0.0, 1.0]),
        "c": torch.tensor([0.0, 1.0, 2.0, 2.0]),
    }
    loss = MultiTaskLoss(TYPES, {"a": 2.0, "b": 0.5, "c": 0.0})
    total, per_task = loss(nn.Linear(1, 1), out, y)
    expected = {
        "a": (_bce(0.5, 1) + _bce(-1.0, 0) + _bce(2.0, 1) + _bce(0.0, 0)) / 4,
        "b": (1 + 0 + 1 + 4) / 4,
        "c": (_ce([1, 0, 0], 0) + _ce([0, 2, 0], 1) + _ce([0, 0, 0], 2) + _ce([1, 1, 5], 2)) / 4,
    }
    assert {k: v.item() for k, v in per_task.items()} == pytest.approx(expected, rel=1e-6)
    # The reported task losses are unweighted; the total is weighted, and c (weight 0) drops out.
    assert total.item() == pytest.approx(2.0 * expected["a"] + 0.5 * expected["b"], rel=1e-6)


def test_missing_label_is_masked_from_its_task_only():
    out = _outputs()
    y = {
        "a": torch.tensor([1.0, NAN, 1.0, 0.0]),  # row 1 has no label for task a
        "b": torch.tensor([0.0, 1.0, NAN, 1.0]),  # row 2 has none for task b
        "c": torch.tensor([0.0, 1.0, 2.0, NAN]),
    }
    loss = MultiTaskLoss(TYPES, dict.fromkeys(TYPES, 1.0))
    per_task = loss.task_losses(out, y)
    assert per_task["a"].item() == pytest.approx(
        (_bce(0.5, 1) + _bce(2.0, 1) + _bce(0.0, 0)) / 3, rel=1e-6
    )
    assert per_task["b"].item() == pytest.approx((1 + 1 + 4) / 3, rel=1e-6)  # row 1 still counts
    assert per_task["c"].item() == pytest.approx(
        (_ce([1, 0, 0], 0) + _ce([0, 2, 0], 1) + _ce([0, 0, 0], 2)) / 3, rel=1e-6
    )
    # A's loss has no gradient at the unlabeled row; B's loss does.
    (grad_a,) = torch.autograd.grad(per_task["a"], out["a"], retain_graph=True)
    assert grad_a[1].item() == 0.0
    assert (grad_a[[0, 2, 3]] != 0).all()
    (grad_b,) = torch.autograd.grad(per_task["b"], out["b"], retain_graph=True)
    assert grad_b[1].item() != 0.0 and grad_b[2].item() == 0.0
    (grad_c,) = torch.autograd.grad(per_task["c"], out["c"])
    assert torch.equal(grad_c[3], torch.zeros(3))
    assert all(torch.isfinite(v) for v in per_task.values())


def test_task_without_any_label_contributes_zero_not_nan():
    out = _outputs()
    y = {"a": torch.full((4,), NAN), "b": torch.zeros(4), "c": torch.zeros(4)}
    total, per_task = MultiTaskLoss(TYPES, dict.fromkeys(TYPES, 1.0))(nn.Linear(1, 1), out, y)
    assert per_task["a"].item() == 0.0
    assert torch.isfinite(total)


# --------------------------------------------------------------------------- penalties


@pytest.fixture
def model() -> MultiTaskNet:
    torch.manual_seed(0)
    net = MultiTaskNet(4, {"a": 1, "b": 2}, hidden=[5, 3], norm="layer", head_hidden=2)
    with torch.no_grad():
        # Large biases and norm scales: any penalty that included them would be far off.
        for p in net.parameters():
            if p.ndim == 1:
                p.fill_(7.0)
    return net


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Linear)]


def test_penalised_parameters_are_weight_matrices_only(model):
    trunk = {id(p) for p in penalised_parameters(model, "trunk")}
    every = {id(p) for p in penalised_parameters(model, "all")}
    assert trunk == {id(w) for w in _weights(model.trunk)}
    assert every == {id(w) for w in _weights(model)}
    assert len(trunk) == 2 and len(every) == 2 + 2 * 2


@pytest.mark.parametrize("scope", ["trunk", "all"])
def test_penalty_by_hand(model, scope):
    ws = _weights(model.trunk if scope == "trunk" else model)
    l1 = sum(w.abs().sum().item() for w in ws)
    l2 = sum((w**2).sum().item() for w in ws)
    assert MultiTaskLoss({"a": "binary"}, {"a": 1}, l1=0.1, penalty_scope=scope).penalty(
        model
    ).item() == pytest.approx(0.1 * l1, rel=1e-5)
    assert MultiTaskLoss({"a": "binary"}, {"a": 1}, l2=0.2, penalty_scope=scope).penalty(
        model
    ).item() == pytest.approx(0.2 * l2, rel=1e-5)
    both = MultiTaskLoss({"a": "binary"}, {"a": 1}, l1=0.1, l2=0.2, penalty_scope=scope)
    assert both.penalty(model).item() == pytest.approx(0.1 * l1 + 0.2 * l2, rel=1e-5)


def test_penalty_is_added_to_the_total_and_zero_when_off(model):
    x = torch.randn(6, 4)
    y = {"a": torch.ones(6), "b": torch.zeros(6)}
    plain = MultiTaskLoss({"a": "binary", "b": "multiclass"}, {"a": 1.0, "b": 1.0})
    assert plain.penalty(model) == 0.0
    penal = MultiTaskLoss({"a": "binary", "b": "multiclass"}, {"a": 1.0, "b": 1.0}, l1=0.3)
    t0, _ = plain(model, model(x), y)
    t1, per_task = penal(model, model(x), y)
    expected = 0.3 * sum(w.abs().sum() for w in _weights(model.trunk))
    assert (t1 - t0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert t1.item() == pytest.approx(sum(v.item() for v in per_task.values()) + expected.item())
    # The penalty's gradient reaches the trunk weights but not the biases.
    trunk_lin = _weights(model.trunk)[0]
    model.zero_grad()
    penal.penalty(model).backward()
    assert torch.allclose(trunk_lin.grad, 0.3 * torch.sign(trunk_lin.detach()))
    assert all(m.bias.grad is None for m in model.trunk if isinstance(m, nn.Linear))


def test_weights_must_match_tasks_and_be_non_negative():
    with pytest.raises(ValueError, match="must match"):
        MultiTaskLoss({"a": "binary"}, {"b": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        MultiTaskLoss({"a": "binary"}, {"a": -1.0})


def test_build_loss_from_config():
    loss = build_loss(LossConfig(l1=0.1, penalty_scope="all"), {"a": "binary", "b": "regression"})
    assert loss.weights == {"a": 1.0, "b": 1.0}
    assert (loss.l1, loss.l2, loss.scope) == (0.1, 0.0, "all")
    weighted = build_loss(LossConfig(weights={"a": 3.0, "b": 0.0}), {"a": "binary", "b": "binary"})
    assert weighted.weights == {"a": 3.0, "b": 0.0}
