"""Weighting methods: static weights, and the hooks a learned method gets from the training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl_core.data import prepare
from mtl_core.losses import MultiTaskLoss, build_loss
from mtl_core.model import build_model, model_spec
from mtl_core.train import fit, train_from_config
from mtl_core.weighting import WEIGHTINGS, Weighting
from mtl_core.weighting.static import Static


def test_static_is_registered_and_does_not_learn_weights():
    assert WEIGHTINGS["static"] is Static
    assert Static.learns_weights is False
    assert Weighting.learns_weights is True  # a new method sets its own weights by default
    assert isinstance(Static(["a"]), nn.Module)


def test_static_weights_default_to_one():
    w = Static(["a", "b"], {"b": 0.25})
    assert w.weights == {"a": 1.0, "b": 0.25}
    shown = w.current_weights()
    assert shown == {"a": 1.0, "b": 0.25}
    shown["a"] = 9.0
    assert w.weights["a"] == 1.0  # a copy, for logs
    assert Static(["a", "b"]).current_weights() == {"a": 1.0, "b": 1.0}
    assert list(Static(["a"]).parameters()) == []


def test_static_refuses_weights_of_unknown_tasks_or_below_zero():
    with pytest.raises(ValueError, match=r"\['c'\] must match the tasks \['a', 'b'\]"):
        Static(["a", "b"], {"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        Static(["a", "b"], {"a": -0.5})


def test_static_backward_is_the_weighted_sum_plus_penalty():
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = {"a": theta[0] ** 2, "b": 3 * theta[1]}
    penalty = 0.5 * theta.abs().sum()
    total = Static(["a", "b"], {"a": 2.0, "b": 0.1}).backward(losses, penalty, [theta])
    assert total.item() == pytest.approx(2 * 1 + 0.1 * 6 + 0.5 * 3)
    assert not total.requires_grad
    assert theta.grad.tolist() == pytest.approx([2 * 2 + 0.5, 0.1 * 3 + 0.5])


class _Spy(Static):
    """Static weighting that records what the loss hands it."""

    def __init__(self, tasks, weights=None):
        super().__init__(tasks, weights)
        self.calls: list[tuple] = []

    def backward(self, losses, penalty, shared):
        self.calls.append((sorted(losses), penalty, [id(p) for p in shared]))
        return super().backward(losses, penalty, shared)


def test_loss_hands_the_weighting_task_losses_penalty_and_shared_parameters(tiny_synthetic):
    cfg = tiny_synthetic("loss.l2=0.01")
    data = prepare(cfg.data)
    model = build_model(model_spec(cfg.model, cfg.features, data), 0)
    spy = _Spy([t.name for t in data.tasks])
    loss = MultiTaskLoss(data.tasks, spy, l2=0.01)
    split = data.splits["train"]
    x, c = torch.as_tensor(split.X[:16]), torch.as_tensor(split.C[:16])
    per_task = loss.task_losses(
        model(x, c), {k: torch.as_tensor(v[:16]) for k, v in split.y.items()}
    )
    loss.backward(model, per_task)
    ((names, penalty, shared),) = spy.calls
    assert names == sorted(t.name for t in data.tasks)
    assert penalty.item() == pytest.approx(loss.penalty(model).item())
    assert shared == [id(p) for p in model.shared_parameters()]


# --------------------------------------------------------------------------- a learned method


class _LearnedWeights(Weighting):
    """Kendall et al.-style log-variances: parameters of the weighting itself."""

    def __init__(self, tasks, weights=None):
        super().__init__(tasks, weights)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))
        self.steps = 0
        self.recomputed: list[dict] = []
        self.epochs: list[dict] = []

    def backward(self, losses, penalty, shared):
        total = penalty + sum(
            torch.exp(-s) * losses[t] + s for t, s in zip(self.tasks, self.log_vars, strict=True)
        )
        total.backward()
        return total.detach()

    def after_step(self, recompute):
        self.steps += 1
        if self.steps == 1:
            self.recomputed.append({k: v.item() for k, v in recompute().items()})

    def epoch_end(self, epoch_losses):
        self.epochs.append(dict(epoch_losses))

    def current_weights(self):
        return dict(zip(self.tasks, torch.exp(-self.log_vars).tolist(), strict=True))


@pytest.fixture
def learned():
    WEIGHTINGS.register("learned_test")(_LearnedWeights)
    yield _LearnedWeights
    del WEIGHTINGS["learned_test"]


def test_a_learned_weighting_trains_with_the_model(learned, tiny_synthetic):
    cfg = tiny_synthetic("loss.weighting=learned_test", "train.patience=null")
    data = prepare(cfg.data)
    loss = build_loss(cfg.loss, data.tasks)
    assert isinstance(loss.weighting, learned)
    model = build_model(model_spec(cfg.model, cfg.features, data), 0)
    result = fit(model, data, loss, cfg.train)
    w = loss.weighting
    # Its parameters joined the optimiser...
    assert not torch.equal(w.log_vars.detach(), torch.zeros(2))
    # ...and every hook ran: after each step, and once per epoch with the epoch's task losses.
    n, bs = len(data.splits["train"]), cfg.train.batch_size
    batches = sum(1 for start in range(0, n, bs) if min(start + bs, n) - start >= 2)
    assert w.steps == cfg.train.epochs * batches
    assert set(w.recomputed[0]) == {t.name for t in data.tasks}
    assert w.epochs == [h.train_task_losses for h in result.history]
    assert set(w.current_weights()) == {t.name for t in data.tasks}


def test_train_from_config_uses_the_configured_weighting(learned, tiny_synthetic, monkeypatch):
    cfg = tiny_synthetic("loss.weighting=learned_test", "train.epochs=1")
    seen = []
    real = learned.backward

    def spy(self, losses, penalty, shared):
        seen.append(type(self))
        return real(self, losses, penalty, shared)

    monkeypatch.setattr(learned, "backward", spy)
    train_from_config(cfg, prepare(cfg.data, cfg.features))
    assert seen and set(seen) == {learned}


def test_weighting_base_class_has_no_default_update():
    with pytest.raises(NotImplementedError):
        Weighting(["a"]).backward({"a": torch.tensor(1.0)}, 0.0, [])
    assert Weighting(["a", "b"]).current_weights() == {"a": 1.0, "b": 1.0}
