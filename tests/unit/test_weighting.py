"""Weighting methods: each learns through the one recipe, serves, and does what its paper says."""

from __future__ import annotations

import math

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from mtl_core import train
from mtl_core.config import LossConfig, load_config
from mtl_core.data import PreparedData, prepare
from mtl_core.errors import ConfigError
from mtl_core.integrations.serving import save_pyfunc
from mtl_core.losses import build_loss
from mtl_core.metrics import evaluate
from mtl_core.model import build_model, model_spec
from mtl_core.train import fit, predict_outputs, train_from_config
from mtl_core.weighting import WEIGHTINGS

METHODS = sorted(WEIGHTINGS)
LEARNING = [m for m in METHODS if WEIGHTINGS[m].learns_weights]

# default.yaml's two tasks (y0_value regression, y1_positive binary), made small enough to
# train in about a second per method on one CPU thread.
LEARN = [
    "data.synthetic.n_rows=600",
    "data.synthetic.dim=10",
    "model.hidden=[16]",
    "train.epochs=12",
    "train.batch_size=64",
    "train.lr=0.01",
    "train.device=cpu",
]


def leaf(value: float) -> torch.Tensor:
    """A scalar standing in for a task loss, whose .grad shows the weight it was given."""
    return torch.tensor(value, requires_grad=True)


# --------------------------------------------------------------------------- every method learns


@pytest.fixture(scope="module", params=METHODS)
def trained(request) -> tuple[str, PreparedData, nn.Module, train.FitResult]:
    """One model per method, trained through train_from_config (shared by the tests below)."""
    cfg = load_config("default", [*LEARN, f"loss.weighting={request.param}"])
    data = prepare(cfg.data, cfg.features)
    model, result = train_from_config(cfg, data)
    return request.param, data, model, result


def _constant_scores(data: PreparedData) -> tuple[float, float]:
    """Test R² and log-loss of predicting the training mean and positive rate: no learning."""
    train_y, test_y = data.splits["train"].y, data.splits["test"].y
    r, p = test_y["y0_value"], test_y["y1_positive"]
    r2 = skm.r2_score(r, np.full_like(r, np.nanmean(train_y["y0_value"])))
    log_loss = skm.log_loss(p, np.full_like(p, np.nanmean(train_y["y1_positive"])), labels=[0, 1])
    return float(r2), float(log_loss)


def test_every_method_learns_both_tasks(trained):
    name, data, model, _ = trained
    m = evaluate(model, data, splits=("test",), device="cpu")
    const_r2, const_log_loss = _constant_scores(data)
    r2, log_loss, auc = (
        m[f"test/{k}"] for k in ("y0_value/r2", "y1_positive/log_loss", "y1_positive/auc")
    )
    print(
        f"{name}: R² {r2:.3f} (constant {const_r2:.3f}), log-loss {log_loss:.3f} "
        f"(constant {const_log_loss:.3f}), AUC {auc:.3f}"
    )
    # Measured (torch 2.13 CPU, train.seed 0, then seeds 1-3 in brackets); the constant
    # predictor scores R² -0.022 and log-loss 0.693, and a constant score has AUC 0.5:
    #   static       R² 0.966 (0.967-0.969)  log-loss 0.137 (0.134-0.157)  AUC 0.991 (0.988-0.994)
    #   uncertainty  R² 0.965 (0.966-0.969)  log-loss 0.099 (0.099-0.114)  AUC 0.996 (0.995-0.997)
    #   dwa          R² 0.966 (0.966-0.969)  log-loss 0.135 (0.133-0.155)  AUC 0.993 (0.989-0.995)
    #   famo         R² 0.967 (0.965-0.970)  log-loss 0.182 (0.153-0.167)  AUC 0.987 (0.990-0.991)
    #   upgrad       R² 0.966 (0.967-0.969)  log-loss 0.132 (0.129-0.151)  AUC 0.994 (0.989-0.994)
    #   pcgrad       R² 0.966 (0.967-0.969)  log-loss 0.132 (0.129-0.151)  AUC 0.994 (0.989-0.994)
    assert const_r2 < 0.05
    assert r2 > const_r2 + 0.85
    assert log_loss < const_log_loss - 0.4
    assert auc > 0.95


def test_nothing_diverges_with_default_options(trained):
    _, _, _, result = trained
    for h in result.history:
        values = [h.train_loss, h.val_objective, *h.train_task_losses.values()]
        assert all(math.isfinite(v) for v in [*values, *h.val_task_losses.values()]), h
    assert result.best_val_objective < 0.5 * result.history[0].val_objective


@pytest.mark.parametrize("name", METHODS)
def test_nothing_diverges_on_three_task_types_with_missing_labels(name):
    # Penguins: multiclass, regression and binary, with `sex` missing for 11 rows.
    cfg = load_config("penguins", ["train.epochs=5", "train.device=cpu", f"loss.weighting={name}"])
    _, result = train_from_config(cfg, prepare(cfg.data, cfg.features))
    assert all(
        math.isfinite(h.train_loss) and math.isfinite(h.val_objective) for h in result.history
    )
    assert result.history[-1].val_objective < result.history[0].val_objective


def test_the_served_model_predicts_what_the_trained_one_does(trained, tmp_path):
    _, data, model, _ = trained
    rows = data.splits["test"].rows.head(8)
    X, C = data.preprocessor.transform(rows)
    expected = data.preprocessor.predictions(predict_outputs(model, X, C, device="cpu"))
    save_pyfunc(tmp_path / "model", model, data.preprocessor, rows)
    served = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(rows)
    pd.testing.assert_frame_equal(served.reset_index(drop=True), expected, check_dtype=False)


# --------------------------------------------------------------------------- the seam


@pytest.mark.parametrize("name", METHODS)
def test_only_static_has_fixed_weights(name):
    assert WEIGHTINGS[name].learns_weights == (name != "static")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_builds_from_the_default_config_and_reports_weights(name, tiny_synthetic):
    cfg = tiny_synthetic(f"loss.weighting={name}")
    weighting = build_loss(cfg.loss, prepare(cfg.data).tasks).weighting
    assert weighting.current_weights() == {"y0_value": 1.0, "y1_positive": 1.0}  # before a step
    model = Toy()
    losses = dict(zip(["y0_value", "y1_positive"], model.losses().values(), strict=True))
    weighting.backward(losses, 0.0, model.shared_parameters())
    weights = weighting.current_weights()
    assert weights.keys() == {"y0_value", "y1_positive"}
    assert all(math.isfinite(v) and v > 0 for v in weights.values())


class Toy(nn.Module):
    """Two tasks on a shared layer; ``only_a`` is shared but only task a reaches it (like an
    embedding row no row of a batch uses), and the ``unused`` tower is reached by no task."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(3, 4)
        self.only_a = nn.Parameter(torch.tensor(0.5))
        self.towers = nn.ModuleDict({t: nn.Linear(4, 1) for t in ("a", "b", "unused")})
        self.x = torch.randn(16, 3)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.shared.parameters(), self.only_a]

    def losses(self) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.shared(self.x))  # (16, 4)
        return {
            "a": ((self.towers["a"](h) * self.only_a - 1) ** 2).mean(),
            "b": ((self.towers["b"](h) + 1) ** 2).mean(),
        }

    def penalty(self) -> torch.Tensor:
        """An L2 penalty over a shared and a task-specific weight."""
        return 0.05 * (self.shared.weight.pow(2).sum() + self.towers["a"].weight.pow(2).sum())


def _toy_grads(name: str, with_penalty: bool) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(0)  # PCGrad draws its order from the global generator
    model, weighting = Toy(), WEIGHTINGS[name](["a", "b"])
    penalty = model.penalty() if with_penalty else 0.0
    weighting.backward(model.losses(), penalty, model.shared_parameters())
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", METHODS)
def test_the_penalty_gradient_is_added_once_and_unreached_parameters_are_fine(name):
    plain, penalised = _toy_grads(name, False), _toy_grads(name, True)
    model = Toy()
    model.penalty().backward()
    for n, p in model.named_parameters():
        if n.startswith("towers.unused"):
            assert plain[n] is None and penalised[n] is None  # no task, no penalty: no gradient
            continue
        assert plain[n] is not None and torch.isfinite(plain[n]).all(), n
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(penalised[n] - plain[n], expected, msg=n)


# --------------------------------------------------------------------------- by hand


def test_uncertainty_loss_and_gradients_by_hand():
    w = WEIGHTINGS["uncertainty"](["a", "b"])
    (log_var,) = w.optimised_parameters()  # joins the model's optimiser
    with torch.no_grad():
        log_var.copy_(torch.tensor([0.5, -1.0]))
    a, b, penalty = leaf(2.0), leaf(3.0), leaf(0.25)
    total = w.backward({"a": a, "b": b}, penalty, [])
    # sum_t (exp(-s_t) L_t + s_t) / 2 + penalty, with s = (0.5, -1) and L = (2, 3).
    e = math.exp
    assert total.item() == pytest.approx((e(-0.5) * 2 + 0.5) / 2 + (e(1.0) * 3 - 1.0) / 2 + 0.25)
    assert a.grad.item() == pytest.approx(e(-0.5) / 2)
    assert b.grad.item() == pytest.approx(e(1.0) / 2)
    assert penalty.grad.item() == 1.0
    # d/ds_t = (1 - exp(-s_t) L_t) / 2: zero where s_t = log L_t, i.e. weight 1 / (2 L_t).
    expected = [(1 - e(-0.5) * 2) / 2, (1 - e(1.0) * 3) / 2]
    assert log_var.grad.tolist() == pytest.approx(expected)
    assert w.current_weights() == pytest.approx({"a": e(-0.5) / 2, "b": e(1.0) / 2})


def _dwa_step(w, *losses: float) -> list[float]:
    """One batch with these task losses; the weights DWA gave them, in task order."""
    leaves = [leaf(v) for v in losses]
    w.backward(dict(zip(w.tasks, leaves, strict=True)), 0.0, [])
    weights = list(w.current_weights().values())
    assert weights == pytest.approx([v.grad.item() for v in leaves])
    return weights


def test_dwa_weights_for_a_loss_history():
    w = WEIGHTINGS["dwa"](["a", "b"])  # temperature 2, the paper's
    # Epochs 1 and 2: no two past epochs yet, so equal weights. Epoch 1's mean is (2, 2).
    assert _dwa_step(w, 1.0, 2.0) == [1.0, 1.0]
    assert _dwa_step(w, 3.0, 2.0) == [1.0, 1.0]
    w.epoch_end({"a": 2.0, "b": 2.0})
    assert _dwa_step(w, 1.0, 1.8) == [1.0, 1.0]
    w.epoch_end({"a": 1.0, "b": 1.8})
    # Epoch 3: r = (1 / 2, 1.8 / 2); λ_k = 2 exp(r_k / 2) / sum_i exp(r_i / 2). b fell least.
    a = 2 * math.exp(0.25) / (math.exp(0.25) + math.exp(0.45))
    assert a == pytest.approx(0.90033, abs=1e-5)
    assert _dwa_step(w, 0.5, 0.9) == pytest.approx([a, 2 - a])  # summing to 2 tasks
    w.epoch_end({"a": 0.5, "b": 0.9})
    # Epoch 4: both halved, so equal weights again.
    assert _dwa_step(w, 0.4, 0.4) == pytest.approx([1.0, 1.0])


def test_dwa_temperature_reaches_the_method_from_the_config(tiny_synthetic):
    cfg = tiny_synthetic("loss.weighting=dwa", "loss.dwa_temperature=0.5")
    w = build_loss(cfg.loss, prepare(cfg.data).tasks).weighting
    for losses in ((1.0, 2.0), (1.0, 1.8)):
        _dwa_step(w, *losses)
        w.epoch_end({})
    # r = (1, 0.9) at T = 0.5: λ = 2 softmax(2, 1.8); a cooler temperature, sharper weights.
    a = 2 * math.exp(2.0) / (math.exp(2.0) + math.exp(1.8))
    assert _dwa_step(w, 1.0, 1.0) == pytest.approx([a, 2 - a])


def test_famo_weights_by_hand_and_its_logits_move_to_the_task_that_fell_least():
    w = WEIGHTINGS["famo"](["a", "b"])
    a, b = leaf(1.0), leaf(3.0)
    w.backward({"a": a, "b": b}, 0.0, [])
    # z = (1/2, 1/2) at the start; c = 1 / (0.5 / 1 + 0.5 / 3) = 1.5, so the task gradients
    # are weighted c z_t / L_t = (0.75, 0.25): a convex combination.
    assert (a.grad.item(), b.grad.item()) == pytest.approx((0.75, 0.25))
    # After the step a fell by half, b by a tenth. Adam's first step moves each logit by
    # its learning rate, 0.025, against the sign of its gradient: w = (-0.025, 0.025).
    w.after_step(lambda: {"a": torch.tensor(0.5), "b": torch.tensor(2.7)})
    a, b = leaf(1.0), leaf(1.0)
    w.backward({"a": a, "b": b}, 0.0, [])
    # With equal losses the weights are z = softmax(w).
    z_b = 1 / (1 + math.exp(-0.05))
    assert (a.grad.item(), b.grad.item()) == pytest.approx((1 - z_b, z_b), abs=1e-6)
    # Keep b's loss flat while a's falls: b's weight keeps rising.
    before = z_b
    for _ in range(5):
        w.after_step(lambda: {"a": torch.tensor(0.5), "b": torch.tensor(1.0)})
        w.backward({"a": leaf(1.0), "b": leaf(1.0)}, 0.0, [])
        assert w.current_weights()["b"] > before
        before = w.current_weights()["b"]


@pytest.mark.parametrize(("name", "extra"), [("famo", 0), ("uncertainty", 1)])
def test_famo_logits_stay_out_of_the_model_optimiser(name, extra, tiny_synthetic, monkeypatch):
    cfg = tiny_synthetic(f"loss.weighting={name}")
    data = prepare(cfg.data, cfg.features)
    model = build_model(model_spec(cfg.model, cfg.features, data), 0)
    loss = build_loss(cfg.loss, data.tasks)
    stepped: list[nn.Parameter] = []
    make = train._optimizer
    monkeypatch.setattr(train, "_optimizer", lambda ps, c: stepped.extend(ps) or make(ps, c))
    fit(model, data, loss, cfg.train)
    own = list(loss.weighting.parameters())
    assert len(own) == 1
    assert len(stepped) == len(list(model.parameters())) + extra
    assert any(p is own[0] for p in stepped) == bool(extra)
    assert own[0].abs().sum() > 0  # trained all the same: FAMO by its own Adam


def _conflict(name: str):
    """Two linear task losses whose gradients on θ conflict: g_a = (1, 0), g_b = (-2, 1).

    Their sum (-1, 1) would raise L_a. ``head`` is a's own parameter; ``unused`` is in no loss.
    """
    theta = nn.Parameter(torch.tensor([0.3, -0.2]))
    head, unused = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.ones(3))
    g_a, g_b = torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 1.0])
    la, lb = g_a @ theta + head**2 + 1, g_b @ theta + 1
    total = WEIGHTINGS[name](["a", "b"]).backward({"a": la, "b": lb}, 0.0, [theta])
    assert total.item() == pytest.approx(la.item() + lb.item())
    assert head.grad.item() == pytest.approx(1.0)  # its ordinary gradient, 2 * head
    assert unused.grad is None
    return theta.grad, g_a, g_b


@pytest.mark.parametrize("name", ["upgrad", "pcgrad"])
def test_gradient_surgery_on_two_conflicting_tasks_by_hand(name):
    update, g_a, g_b = _conflict(name)
    # The update conflicts with neither task (UPGrad's guarantee).
    assert update @ g_a >= -1e-6 and update @ g_b >= -1e-6
    # PCGrad by hand: g_a - (g_a·g_b / |g_b|²) g_b = (1, 0) + 2/5 (-2, 1) = (0.2, 0.4);
    # g_b - (g_b·g_a / |g_a|²) g_a = (-2, 1) + 2 (1, 0) = (0, 1); summed, (0.2, 1.4).
    # With two tasks UPGrad's projections onto the dual cone are the same ones, and its
    # preference of 1 per task sums them too; torchjd regularises UPGrad's quadratic program
    # (1e-4 on the normalised Gramian), which moved it by 1.1e-3 here.
    atol = 5e-3 if name == "upgrad" else 1e-6
    torch.testing.assert_close(update, torch.tensor([0.2, 1.4]), atol=atol, rtol=0)


def test_upgrad_never_conflicts_with_any_of_several_tasks():
    torch.manual_seed(0)
    for _ in range(20):
        J = torch.randn(4, 6)  # four tasks' gradients on six shared weights
        theta = nn.Parameter(torch.zeros(6))
        losses = {str(i): J[i] @ theta for i in range(4)}
        WEIGHTINGS["upgrad"](list(losses)).backward(losses, 0.0, [theta])
        assert (J @ theta.grad >= -1e-4).all()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", LEARNING)
def test_a_method_that_learns_weights_refuses_static_weights(name, tiny_synthetic):
    with pytest.raises(ConfigError, match=rf"loss\.weights.*'{name}' sets its own") as err:
        tiny_synthetic(f"loss.weighting={name}", "loss.weights={y0_value: 1, y1_positive: 2}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override",
    [
        "loss.dwa_temperature=0",
        "loss.dwa_temperature=-1",
        "loss.dwa_temperature=1000",
        "loss.famo_lr=0",
        "loss.famo_lr=2",
        "loss.famo_decay=-0.1",
        "loss.famo_decay=abc",
    ],
)
def test_a_bad_option_is_a_one_line_error_naming_its_key(override, tiny_synthetic):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"key '{key}'") as err:
        tiny_synthetic("loss.weighting=dwa", override)
    assert "\n" not in str(err.value)


def test_each_method_gets_only_its_own_options(tiny_synthetic):
    assert LossConfig(weighting="static").weighting_options() == {}
    assert LossConfig(weighting="dwa", dwa_temperature=3.0).weighting_options() == {
        "temperature": 3.0
    }
    cfg = tiny_synthetic("loss.weighting=famo", "loss.famo_lr=0.05", "loss.famo_decay=0")
    assert cfg.loss.weighting_options() == {"lr": 0.05, "decay": 0.0}
    famo = build_loss(cfg.loss, prepare(cfg.data).tasks).weighting.scalarizer
    assert (famo.lr, famo.weight_decay) == (0.05, 0.0)


def test_famo_task_without_labels_in_the_batch_sits_the_step_out():
    w = WEIGHTINGS["famo"](["a", "b", "c"])
    a, b, c = leaf(1.0), leaf(3.0), leaf(0.0)  # c: no label in this batch (masked loss 0)
    w.backward({"a": a, "b": b, "c": c}, 0.0, [])
    # a and b share the step as FAMO weights two tasks (z = 1/2 each): (0.75, 0.25); c gets 0.
    assert (a.grad.item(), b.grad.item()) == pytest.approx((0.75, 0.25))
    assert c.grad.item() == pytest.approx(0.0, abs=1e-12)
    assert w.current_weights()["c"] == pytest.approx(0.0, abs=1e-12)
    w.after_step(lambda: {"a": torch.tensor(0.5), "b": torch.tensor(2.7), "c": torch.tensor(0.0)})
    (logits,) = w.scalarizer.parameters()
    # c's logit does not move; a's and b's take Adam's first step, lr against their
    # gradient's sign, as in the two-task test above.
    assert logits.tolist() == pytest.approx([-0.025, 0.025, 0.0], abs=1e-6)
    # Back with labels, c is weighted by its logit like the others: z = softmax(w).
    a, b, c = leaf(1.0), leaf(1.0), leaf(1.0)
    w.backward({"a": a, "b": b, "c": c}, 0.0, [])
    z = torch.softmax(logits.detach(), 0).tolist()
    assert [a.grad.item(), b.grad.item(), c.grad.item()] == pytest.approx(z, abs=1e-6)
