"""Population training: batched members match fit, end on their own, and learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import vmap

from mtl_core.config import ExperimentConfig
from mtl_core.data import prepare
from mtl_core.errors import NonFiniteLossError
from mtl_core.metrics import evaluate
from mtl_core.model import MultiTaskModel
from mtl_core.population import (
    Member,
    _MemberDropout,
    fit_group,
    group_members,
    sequential_reason,
    train_population,
)
from mtl_core.train import train_from_config


def _with(cfg: ExperimentConfig, **sections) -> ExperimentConfig:
    """A copy of ``cfg`` with ``section={key: value}`` updates."""
    data = cfg.model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return ExperimentConfig.model_validate(data)


def _close(a, b, rel: float) -> None:
    assert len(a.history) == len(b.history)
    for x, y in zip(a.history, b.history, strict=True):
        assert x.epoch == y.epoch
        assert x.train_loss == pytest.approx(y.train_loss, rel=rel)
        assert x.val_objective == pytest.approx(y.val_objective, rel=rel)
        assert x.val_task_losses == pytest.approx(y.val_task_losses, rel=rel)
        assert x.lr == pytest.approx(y.lr, rel=1e-12)
    assert a.best_epoch == b.best_epoch
    assert a.best_val_objective == pytest.approx(b.best_val_objective, rel=rel)
    assert a.stopped_early == b.stopped_early


# The same init, batch order and losses; bmm instead of mm and a hand-written AdamW leave
# differences at float32 rounding (measured up to 3e-8 in the weights after 4 epochs).
VARIANTS = {
    "adamw": [],
    "sgd": ["train.optimizer=sgd"],
    "cosine, l1, l2": ["train.scheduler=cosine", "loss.l1=1e-3", "loss.l2=1e-3"],
    "mmoe, periodic": ["model.arch=mmoe", "features.numeric_embedding=periodic"],
    "ple, piecewise, layer norm": [
        "model.arch=ple",
        "features.numeric_embedding=piecewise_linear",
        "model.norm=layer",
    ],
    # DWA's weights differ from 1 from epoch 3; uncertainty's log-variances are stepped by
    # AdamW with the model (weight decay too), outside clipping and the penalty.
    "dwa": ["loss.weighting=dwa", "loss.dwa_temperature=0.5", "train.grad_clip=0.5"],
    "uncertainty, weight decay, l2": [
        "loss.weighting=uncertainty",
        "train.weight_decay=0.05",
        "loss.l2=1e-3",
        "train.grad_clip=0.5",
    ],
    "weights, no clipping, step": [
        "loss.weights={y0_value: 0.4, y1_positive: 1.6}",
        "train.grad_clip=null",
        "train.scheduler=step",
        "train.step_size=2",
    ],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_member_matches_fit(tiny_synthetic, variant):
    cfg = tiny_synthetic("train.epochs=4", *VARIANTS[variant])
    data = prepare(cfg.data, cfg.features)
    model, ref = train_from_config(cfg, data)
    [(member_model, res)] = fit_group([Member(cfg, data)])
    assert res.error is None
    _close(res, ref, rel=1e-5)
    assert set(res.best_state) == set(ref.best_state)
    for k, v in ref.best_state.items():
        torch.testing.assert_close(res.best_state[k], v, rtol=1e-4, atol=1e-6)
    # The best state is a plain state_dict of the member's own model.
    fresh = MultiTaskModel(model.spec)
    fresh.load_state_dict(res.best_state)
    assert evaluate(fresh, data, ("val",), "cpu") == pytest.approx(
        evaluate(member_model, data, ("val",), "cpu")
    )


def test_one_member_with_batch_norm_matches_fit_closely(tiny_synthetic):
    # The Linear bias before a BatchNorm has a true gradient of exactly zero, so AdamW turns
    # float rounding noise into lr-sized steps of it, and the running mean that tracks it
    # differs too: training losses still match, the evaluation-mode objective to ~1e-3.
    cfg = tiny_synthetic("train.epochs=4", "model.norm=batch")
    data = prepare(cfg.data, cfg.features)
    _, ref = train_from_config(cfg, data)
    [(_, res)] = fit_group([Member(cfg, data)])
    for x, y in zip(res.history, ref.history, strict=True):
        assert x.train_loss == pytest.approx(y.train_loss, rel=1e-5)
        assert x.val_objective == pytest.approx(y.val_objective, rel=1e-2)


def _each_matches_its_own_fit(base: ExperimentConfig, data, settings: list[dict]) -> list:
    """fit_group of ``base`` with each member's ``settings``; asserts each matches its fit."""
    cfgs = [_with(base, **s) for s in settings]
    batched = fit_group([Member(c, data) for c in cfgs])
    for cfg, (_, res) in zip(cfgs, batched, strict=True):
        _, ref = train_from_config(cfg, data)
        _close(res, ref, rel=1e-5)
    return batched


def test_members_with_their_own_settings_each_match_their_own_fit(tiny_synthetic):
    base = tiny_synthetic("train.epochs=6", "train.min_delta=0.0")
    data = prepare(base.data, base.features)
    settings = [
        {"train": {"lr": 3e-3}, "loss": {"weights": {"y0_value": 1.5, "y1_positive": 0.5}}},
        {"train": {"lr": 3e-2, "patience": 1, "min_delta": 0.2}, "loss": {"l1": 1e-3}},
        {"train": {"lr": 1e-4, "seed": 7, "grad_clip": 0.5}, "loss": {"l2": 1e-2}},
        {"train": {"lr": 1e-2, "weight_decay": 0.1, "min_delta": 0.05, "patience": 2}},
    ]
    batched = _each_matches_its_own_fit(base, data, settings)
    lengths = [len(res.history) for _, res in batched]
    assert len(set(lengths)) > 1, "early stopping is each member's own"
    assert len({res.best_val_objective for _, res in batched}) == len(settings)


@pytest.mark.parametrize("weighting", ["dwa", "uncertainty", "famo", "upgrad", "pcgrad"])
def test_members_of_a_batched_weighting_each_match_their_own_fit(tiny_synthetic, weighting):
    base = tiny_synthetic("train.epochs=6", "train.min_delta=0.0", f"loss.weighting={weighting}")
    data = prepare(base.data, base.features)
    settings = [
        {"train": {"lr": 3e-3}, "loss": {"dwa_temperature": 0.5, "famo_lr": 0.1}},
        # Stops early, so the others go on without its row (and its DWA history).
        {"train": {"lr": 3e-2, "patience": 1, "min_delta": 0.2}, "loss": {"dwa_temperature": 5}},
        {"train": {"lr": 1e-2, "seed": 7, "grad_clip": 0.5}, "loss": {"l2": 1e-2, "famo_decay": 0}},
    ]
    batched = _each_matches_its_own_fit(base, data, settings)
    lengths = [len(res.history) for _, res in batched]
    assert min(lengths) < max(lengths) == 6


def test_famo_members_match_fit_when_a_task_has_no_label_in_a_batch(tiny_synthetic):
    # With 10 labelled rows of y1 in batches of 16, about half the batches hold none: there
    # the task sits FAMO's step out (logit and Adam moments kept), in fit and batched alike.
    base = tiny_synthetic(
        "train.epochs=4", "train.min_delta=0.0", "train.batch_size=16", "loss.weighting=famo"
    )
    data = prepare(base.data, base.features)
    data.splits["train"].y["y1_positive"][10:] = np.nan
    settings = [
        {"train": {"lr": 3e-3}},
        {"train": {"lr": 1e-2, "seed": 7}, "loss": {"famo_lr": 0.1}},
    ]
    _each_matches_its_own_fit(base, data, settings)


def test_a_member_whose_weighting_fails_ends_alone_with_its_error(tiny_synthetic, monkeypatch):
    # UPGrad's QP solver can fail (torchjd raises); in fit that ends the trial. Batched, it
    # ends that member with the same error, and the others train on as if alone.
    from torchjd.aggregation import UPGradWeighting

    base = tiny_synthetic("train.epochs=3", "loss.weighting=upgrad")
    data = prepare(base.data, base.features)
    cfgs = [_with(base, train={"seed": seed}) for seed in (0, 1, 2)]
    refs = [train_from_config(c, data)[1] for c in cfgs]
    real, calls = UPGradWeighting.forward, []

    def flaky(self, gramian):
        calls.append(1)
        if len(calls) == 2:  # the second member, at its first step
            raise ValueError("Failed to solve the quadratic programming problem.")
        return real(self, gramian)

    monkeypatch.setattr(UPGradWeighting, "forward", flaky)
    (_, r0), (model, r1), (_, r2) = fit_group([Member(c, data) for c in cfgs])
    assert model is None and isinstance(r1.error, ValueError)
    assert "quadratic programming" in str(r1.error)
    _close(r0, refs[0], rel=1e-5)
    _close(r2, refs[2], rel=1e-5)


def _sgd(tiny_synthetic, lr: float) -> ExperimentConfig:
    return tiny_synthetic(
        "train.epochs=5", "train.optimizer=sgd", "train.grad_clip=null", f"train.lr={lr}"
    )


def test_a_diverging_member_leaves_the_others_unaffected(tiny_synthetic):
    data = prepare(_sgd(tiny_synthetic, 0.01).data)
    good = [_sgd(tiny_synthetic, 0.01), _with(_sgd(tiny_synthetic, 0.03), train={"seed": 3})]
    bad = _sgd(tiny_synthetic, 1e7)  # plain SGD at this rate overflows in the first epoch
    alone = fit_group([Member(c, data) for c in good])
    mixed = fit_group([Member(good[0], data), Member(bad, data), Member(good[1], data)])
    (_, a0), (_, a1) = alone
    (_, m0), (bad_model, mb), (_, m1) = mixed
    assert isinstance(mb.error, NonFiniteLossError)
    assert "non-finite in epoch 1" in str(mb.error)
    assert bad_model is None and mb.history == []
    assert m0.error is None and m1.error is None
    _close(m0, a0, rel=1e-6)
    _close(m1, a1, rel=1e-6)


def test_a_member_stopped_by_its_callback_leaves_the_others_unaffected(tiny_synthetic):
    cfg = tiny_synthetic("train.epochs=5", "train.patience=null")
    data = prepare(cfg.data)
    cfgs = [cfg, _with(cfg, train={"lr": 3e-3}), _with(cfg, train={"lr": 1e-2})]

    class Pruned(Exception):
        pass

    def prune_at_2(log):
        if log.epoch == 2:
            raise Pruned("pruned at epoch 2")

    alone = fit_group([Member(c, data) for c in (cfgs[0], cfgs[2])])
    mixed = fit_group([Member(c, data) for c in cfgs], callbacks=[[], [prune_at_2], []])
    assert isinstance(mixed[1][1].error, Pruned)
    assert [log.epoch for log in mixed[1][1].history] == [1, 2]
    assert mixed[1][0] is None
    _close(mixed[0][1], alone[0][1], rel=1e-6)
    _close(mixed[2][1], alone[1][1], rel=1e-6)
    assert [log.epoch for log in mixed[2][1].history] == [1, 2, 3, 4, 5]


def test_on_epoch_sees_each_epoch_and_can_stop_members(tiny_synthetic):
    cfg = tiny_synthetic("train.epochs=4", "train.patience=null")
    data = prepare(cfg.data)
    members = [Member(_with(cfg, train={"lr": lr}), data) for lr in (1e-3, 2e-3, 4e-3)]
    seen = []

    def on_epoch(event):
        seen.append((event.epoch, sorted(event.logs), dict(event.ended)))
        return {0: RuntimeError("stop")} if event.epoch == 2 else {}

    out = train_population(members, on_epoch=on_epoch)
    assert [(e, logs) for e, logs, _ in seen] == [
        (1, [0, 1, 2]),
        (2, [0, 1, 2]),
        (3, [1, 2]),
        (4, [1, 2]),
    ]
    assert seen[-1][2] == {1: None, 2: None}  # both ended normally after the last epoch
    assert str(out[0][1].error) == "stop" and len(out[0][1].history) == 2
    assert all(res.error is None and len(res.history) == 4 for _, res in out[1:])


def test_members_are_grouped_by_shape(tiny_synthetic, monkeypatch):
    from mtl_core.weighting import WEIGHTINGS
    from mtl_core.weighting.static import Static

    monkeypatch.setitem(WEIGHTINGS, "static_copy", type("StaticCopy", (Static,), {}))
    cfg = tiny_synthetic("train.epochs=2")
    data = prepare(cfg.data)
    members = [
        Member(cfg, data),
        Member(_with(cfg, train={"lr": 1e-2, "seed": 4}, loss={"l1": 1e-3}), data),
        Member(_with(cfg, model={"hidden": [8]}), data),  # another width
        Member(_with(cfg, model={"dropout": 0.2}), data),  # a Dropout layer more
        Member(_with(cfg, model={"dropout": 0.5}, train={"lr": 2e-3}), data),
        Member(_with(cfg, loss={"weighting": "static_copy"}), data),  # not batched
        Member(_with(cfg, train={"batch_size": 32}), data),
        Member(_with(cfg, loss={"weighting": "dwa"}), data),  # batched, apart from static
        Member(_with(cfg, loss={"weighting": "dwa", "dwa_temperature": 1.0}), data),
        Member(_with(cfg, loss={"weighting": "pcgrad"}), data),  # batched, but alone: fit
    ]
    groups, singles = group_members(members)
    assert sorted(groups) == [[0, 1], [3, 4], [7, 8]]
    assert singles == [2, 5, 6, 9]
    out = train_population(members)
    # A member trained alone goes through fit itself: the same result as train_from_config.
    _, ref = train_from_config(members[5].cfg, data)
    assert [log.val_objective for log in out[5][1].history] == [
        log.val_objective for log in ref.history
    ]
    assert all(res.error is None and len(res.history) == 2 for _, res in out)
    assert "not batched" in sequential_reason(members[5])
    assert sequential_reason(members[9]) is None


def test_member_dropout_draws_its_own_masks_at_its_own_rate():
    drop = _MemberDropout(0.5).train()
    x = torch.ones(20000)
    p = torch.tensor([0.1, 0.6])

    def member(p, x):
        return torch.func.functional_call(drop, {"p": p}, (x,))

    out = vmap(member, in_dims=(0, None), randomness="different")(p, x)
    zeros = (out == 0).float().mean(dim=1)
    assert zeros.tolist() == pytest.approx([0.1, 0.6], abs=0.02)
    assert out[0][out[0] > 0].unique().tolist() == pytest.approx([1 / 0.9])
    assert drop.eval()(x).equal(x)


def test_folds_of_differing_sizes_train_together(tiny_synthetic):
    cfg = tiny_synthetic("train.epochs=3")
    data = prepare(cfg.data)
    folds = data.cv_folds(4)
    assert len({len(f.splits["train"]) for f in folds}) > 1  # 210 rows: 157 or 158 per fold
    out = fit_group([Member(cfg, f) for f in folds])
    for (_, res), fold in zip(out, folds, strict=True):
        _, ref = train_from_config(cfg, fold)
        _close(res, ref, rel=1e-5)


def test_a_population_member_learns(tiny_synthetic):
    cfg = tiny_synthetic(
        "data.synthetic.n_rows=1000", "train.epochs=25", "train.lr=0.01", "model.hidden=[32]"
    )
    data = prepare(cfg.data)
    out = fit_group([Member(_with(cfg, train={"seed": s}), data) for s in range(3)])
    for model, res in out:
        m = evaluate(model, data, ("test",), "cpu")
        # A constant predictor: R² <= 0 and AUC 0.5 on test; its objective is about
        # 1 (standardised MSE) averaged with ln 2 (log-loss at the base rate).
        assert m["test/y0_value/r2"] > 0.5
        assert m["test/y1_positive/auc"] > 0.75
        assert res.best_val_objective < 0.8 * (1.0 + math.log(2)) / 2
