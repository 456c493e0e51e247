"""Single-task baselines: one model per task, metrics under the multi-task model's keys."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_core import baselines
from mtl_core.config import load_config
from mtl_core.data import prepare
from mtl_core.losses import MultiTaskLoss
from mtl_core.metrics import delta_m, evaluate
from mtl_core.train import train_from_config

TASKS = ["species", "body_mass", "sex"]


def test_one_model_per_task_under_the_same_keys(monkeypatch):
    cfg = load_config("penguins", ["train.epochs=4", "train.device=cpu"])
    data = prepare(cfg.data, cfg.features)

    trained = []
    real = baselines.train_from_config

    def spy(sub_cfg, sub, **kw):
        model, result = real(sub_cfg, sub, **kw)
        trained.append(
            (id(model), sub_cfg.task_names, dict(sub.out_dims), list(sub.splits["train"].y), kw)
        )
        return model, result

    monkeypatch.setattr(baselines, "train_from_config", spy)
    result = baselines.single_task_baselines(cfg, data, device="cpu")

    assert [t[1] for t in trained] == [["species"], ["body_mass"], ["sex"]]
    assert [t[2] for t in trained] == [{"species": 3}, {"body_mass": 1}, {"sex": 1}]
    assert [t[3] for t in trained] == [["species"], ["body_mass"], ["sex"]]
    assert all(t[4] == {"device": "cpu"} for t in trained)
    assert len({t[0] for t in trained}) == 3  # three distinct models
    assert set(result.epochs) == set(TASKS)
    assert all(1 <= e <= 4 for e in result.epochs.values())

    # The multi-task model's metrics, minus the aggregates, have exactly the same keys.
    model, _ = train_from_config(cfg, data)
    mtl = evaluate(model, data, device="cpu")
    assert set(result.metrics) == {k for k in mtl if not k.endswith("/objective")}
    assert all(np.isfinite(v) for v in result.metrics.values())
    assert np.isfinite(delta_m(mtl, result.metrics, data.tasks))


def test_single_task_config_keeps_everything_but_the_other_tasks_and_weights():
    cfg = load_config(
        "penguins",
        [
            "loss.weights={species: 2.0, body_mass: 0.5, sex: 0.5}",
            "loss.l1=0.01",
            "loss.l2=0.02",
            "loss.penalty_scope=all",
            "features.categorical=embedding",
            "model.hidden=[16]",
            "train.lr=0.02",
        ],
    )
    sub = baselines.single_task_config(cfg, "body_mass")
    assert sub.task_names == ["body_mass"]
    assert sub.data.tasks == [t for t in cfg.data.tasks if t.name == "body_mass"]
    assert sub.loss.weights is None and sub.loss.weighting == "static"
    assert sub.task_weights() == {"body_mass": 1.0}
    assert (sub.loss.l1, sub.loss.l2, sub.loss.penalty_scope) == (0.01, 0.02, "all")
    for section in ("features", "model", "train", "search", "tracking"):
        assert getattr(sub, section) == getattr(cfg, section), section
    assert cfg.loss.weights == {"species": 2.0, "body_mass": 0.5, "sex": 0.5}  # not mutated


def test_baselines_train_with_the_penalties_and_weight_one(monkeypatch):
    # Since the baselines go through train_from_config, the multi-task config's L1/L2 apply to
    # them too (the comparison then isolates sharing); the task weights do not.
    cfg = load_config(
        "penguins",
        [
            "train.epochs=1",
            "train.device=cpu",
            "loss.l1=0.01",
            "loss.l2=0.02",
            "loss.weights={species: 2.0, body_mass: 0.5, sex: 0.5}",
        ],
    )
    data = prepare(cfg.data, cfg.features)
    seen = []
    real_penalty = MultiTaskLoss.penalty

    def spy_penalty(self, model):
        value = real_penalty(self, model)
        weights = tuple(self.weighting.current_weights().items())
        seen.append((tuple(self.names), self.l1, self.l2, weights))
        assert float(value.detach()) > 0
        return value

    monkeypatch.setattr(MultiTaskLoss, "penalty", spy_penalty)
    baselines.single_task_baselines(cfg, data, device="cpu")
    assert sorted(set(seen), key=lambda s: TASKS.index(s[0][0])) == [
        (("species",), 0.01, 0.02, (("species", 1.0),)),
        (("body_mass",), 0.01, 0.02, (("body_mass", 1.0),)),
        (("sex",), 0.01, 0.02, (("sex", 1.0),)),
    ]
    # One penalty per training step of each baseline (240 rows, batches of 32: 8 steps).
    assert [s[0][0] for s in seen] == [t for t in TASKS for _ in range(8)]


def test_penalties_change_the_baselines(monkeypatch):
    cfg = load_config(
        "penguins",
        [
            "data.tasks=[{name: sex, column: sex, type: binary}]",
            "train.epochs=2",
            "train.device=cpu",
        ],
    )
    data = prepare(cfg.data, cfg.features)
    plain = baselines.single_task_baselines(cfg, data)
    strong = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"l1": 0.05})})
    penalised = baselines.single_task_baselines(strong, data)
    assert set(plain.metrics) == set(penalised.metrics)
    assert penalised.metrics["test/sex/log_loss"] != pytest.approx(
        plain.metrics["test/sex/log_loss"], rel=1e-4
    )
