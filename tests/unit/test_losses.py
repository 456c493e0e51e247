"""The loss: weighted task sum, masking of missing labels, and L1/L2 on weight matrices."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtl_core.config import FeaturesConfig, LossConfig, ModelConfig
from mtl_core.losses import (
    MultiTaskLoss,
    build_loss,
    masked_task_losses,
    penalised_parameters,
    task_loss_sums,
)
from mtl_core.model import ModelSpec, MultiTaskModel
from mtl_core.tasks.binary import BinaryTask
from mtl_core.tasks.multiclass import MulticlassTask
from mtl_core.tasks.regression import RegressionTask
from mtl_core.weighting.static import Static

NAN = float("nan")
TASKS = [
    BinaryTask("a", "ya", classes=[0, 1]),
    RegressionTask("b", "yb"),  # mean 0, std 1: the encoded targets are the values
    MulticlassTask("c", "yc", classes=[0, 1, 2]),
]
NAMES = [t.name for t in TASKS]


def _loss(weights: dict[str, float] | None = None, tasks=TASKS, **kw) -> MultiTaskLoss:
    names = [t.name for t in tasks]
    return MultiTaskLoss(tasks, Static(names, weights or dict.fromkeys(names, 1.0)), **kw)


class _NoParameters(nn.Module):
    """A model without parameters: the loss tests need one only for the penalty."""

    def shared_parameters(self) -> list[nn.Parameter]:
        return []


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
    loss = _loss({"a": 2.0, "b": 0.5, "c": 0.0})
    per_task = loss.task_losses(out, y)
    total = loss.backward(_NoParameters(), per_task)
    expected = {
        "a": (_bce(0.5, 1) + _bce(-1.0, 0) + _bce(2.0, 1) + _bce(0.0, 0)) / 4,
        "b": (1 + 0 + 1 + 4) / 4,
        "c": (_ce([1, 0, 0], 0) + _ce([0, 2, 0], 1) + _ce([0, 0, 0], 2) + _ce([1, 1, 5], 2)) / 4,
    }
    assert {k: v.item() for k, v in per_task.items()} == pytest.approx(expected, rel=1e-6)
    # The reported task losses are unweighted; the total is weighted, and c (weight 0) drops out.
    assert total.item() == pytest.approx(2.0 * expected["a"] + 0.5 * expected["b"], rel=1e-6)
    assert not total.requires_grad  # returned for logging; the gradients are already in .grad
    assert torch.equal(out["c"].grad, torch.zeros(4, 3))
    # d(2 * mean BCE)/d logit = 2 * (sigmoid(logit) - y) / 4
    expected_grad = [2 * (1 / (1 + math.exp(-v)) - t) / 4 for v, t in ((0.5, 1), (-1.0, 0))]
    assert out["a"].grad[:2, 0].tolist() == pytest.approx(expected_grad, rel=1e-6)


def test_missing_label_is_masked_from_its_task_only():
    out = _outputs()
    y = {
        "a": torch.tensor([1.0, NAN, 1.0, 0.0]),  # row 1 has no label for task a
        "b": torch.tensor([0.0, 1.0, NAN, 1.0]),  # row 2 has none for task b
        "c": torch.tensor([0.0, 1.0, 2.0, NAN]),
    }
    loss = _loss()
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
    loss = _loss()
    per_task = loss.task_losses(out, y)
    total = loss.backward(_NoParameters(), per_task)
    assert per_task["a"].item() == 0.0
    assert torch.isfinite(total)
    assert torch.equal(out["a"].grad, torch.zeros(4, 1))


def test_loss_sums_and_counts_are_the_one_masked_computation():
    out = _outputs()
    y = {
        "a": torch.tensor([1.0, NAN, 1.0, 0.0]),
        "b": torch.full((4,), NAN),
        "c": torch.tensor([0.0, 1.0, 2.0, 2.0]),
    }
    sums, counts = task_loss_sums(TASKS, out, y)
    assert sums.shape == counts.shape == (3,)
    assert counts.tolist() == [3.0, 0.0, 4.0]
    assert sums[1].item() == 0.0
    means = masked_task_losses(TASKS, out, y)
    assert list(means) == NAMES
    assert means["a"].item() == pytest.approx(sums[0].item() / 3)
    assert means["b"].item() == 0.0
    assert means["c"].item() == pytest.approx(sums[2].item() / 4)
    assert {k: v.item() for k, v in _loss().task_losses(out, y).items()} == {
        k: v.item() for k, v in means.items()
    }


# --------------------------------------------------------------------------- penalties


def _spec(**features) -> ModelSpec:
    cards = features.pop("cardinalities", [])
    return ModelSpec(
        model=ModelConfig(hidden=[5, 3], norm="layer", head_hidden=2).model_dump(mode="json"),
        features=FeaturesConfig(**features).model_dump(mode="json"),
        n_numeric=4,
        n_dense=4,
        cardinalities=cards,
        embedding_dims=[2] * len(cards),
        out_dims={"a": 1, "b": 2},
    )


@pytest.fixture
def model() -> MultiTaskModel:
    torch.manual_seed(0)
    net = MultiTaskModel(_spec())
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
    assert trunk == {id(w) for w in _weights(model.body.trunk)}
    assert every == {id(w) for w in _weights(model)}
    assert len(trunk) == 2 and len(every) == 2 + 2 * 2


def test_trunk_scope_covers_the_shared_input_embeddings():
    torch.manual_seed(0)
    net = MultiTaskModel(_spec(numeric_embedding="periodic", cardinalities=[6, 3]))
    trunk = {id(p) for p in penalised_parameters(net, "trunk")}
    matrices = {id(p) for p in net.shared_parameters() if p.ndim >= 2}
    assert trunk == matrices
    assert {id(t.weight) for t in net.encoder.tables} <= trunk  # embedding tables are shared
    assert {id(w) for w in _weights(net.body.trunk)} <= trunk
    assert not trunk & {id(p) for t in ("a", "b") for p in net.task_parameters(t)}
    every = {id(p) for p in penalised_parameters(net, "all")}
    assert every == {id(p) for p in net.parameters() if p.ndim >= 2}


@pytest.mark.parametrize("scope", ["trunk", "all"])
def test_penalty_by_hand(model, scope):
    ws = _weights(model.body.trunk if scope == "trunk" else model)
    l1 = sum(w.abs().sum().item() for w in ws)
    l2 = sum((w**2).sum().item() for w in ws)
    one = TASKS[:1]
    assert _loss(tasks=one, l1=0.1, penalty_scope=scope).penalty(model).item() == pytest.approx(
        0.1 * l1, rel=1e-5
    )
    assert _loss(tasks=one, l2=0.2, penalty_scope=scope).penalty(model).item() == pytest.approx(
        0.2 * l2, rel=1e-5
    )
    both = _loss(tasks=one, l1=0.1, l2=0.2, penalty_scope=scope)
    assert both.penalty(model).item() == pytest.approx(0.1 * l1 + 0.2 * l2, rel=1e-5)


def test_penalty_is_added_to_the_total_and_zero_when_off(model):
    x = torch.randn(6, 4)
    y = {"a": torch.ones(6), "b": torch.zeros(6)}
    tasks = [BinaryTask("a", "a", classes=[0, 1]), MulticlassTask("b", "b", classes=[0, 1])]
    plain = _loss(tasks=tasks)
    assert plain.penalty(model) == 0.0
    penal = _loss(tasks=tasks, l1=0.3)
    t0 = plain.backward(model, plain.task_losses(model(x), y))
    per_task = penal.task_losses(model(x), y)
    t1 = penal.backward(model, per_task)
    expected = 0.3 * sum(w.abs().sum() for w in _weights(model.body.trunk))
    assert (t1 - t0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert t1.item() == pytest.approx(sum(v.item() for v in per_task.values()) + expected.item())
    # The penalty's gradient reaches the trunk weights but not the biases.
    trunk_lin = _weights(model.body.trunk)[0]
    model.zero_grad()
    penal.penalty(model).backward()
    assert torch.allclose(trunk_lin.grad, 0.3 * torch.sign(trunk_lin.detach()))
    assert all(m.bias.grad is None for m in model.body.trunk if isinstance(m, nn.Linear))


def test_weights_must_match_tasks_and_be_non_negative():
    # The static weighting checks its weights (the config checks them for YAML users too).
    with pytest.raises(ValueError, match="must match"):
        MultiTaskLoss(TASKS[:1], Static(["a"], {"b": 1.0}))
    with pytest.raises(ValueError, match=">= 0"):
        MultiTaskLoss(TASKS[:1], Static(["a"], {"a": -1.0}))


def test_build_loss_from_config():
    tasks = [TASKS[0], TASKS[1]]
    loss = build_loss(LossConfig(l1=0.1, penalty_scope="all"), tasks)
    assert isinstance(loss.weighting, Static)
    assert loss.weighting.weights == {"a": 1.0, "b": 1.0}
    assert loss.tasks == tasks and loss.names == ["a", "b"]
    assert (loss.l1, loss.l2, loss.scope) == (0.1, 0.0, "all")
    both_binary = [TASKS[0], BinaryTask("b", "yb", classes=[0, 1])]
    weighted = build_loss(LossConfig(weights={"a": 3.0, "b": 0.0}), both_binary)
    assert weighted.weighting.weights == {"a": 3.0, "b": 0.0}
    assert weighted.weighting.current_weights() == {"a": 3.0, "b": 0.0}
