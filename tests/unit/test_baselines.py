"""Single-task baselines: one model per task, metrics under the multi-task model's keys."""

from __future__ import annotations

import numpy as np

from mtl_core import baselines
from mtl_core.config import load_config
from mtl_core.data import prepare
from mtl_core.losses import build_loss
from mtl_core.metrics import delta_m, evaluate
from mtl_core.model import build_model
from mtl_core.train import fit


def test_one_model_per_task_under_the_same_keys(monkeypatch):
    cfg = load_config("penguins", ["train.epochs=4", "train.device=cpu"])
    data = prepare(cfg.data)

    built, trained = [], []
    real_build, real_fit = baselines.build_model, baselines.fit

    def spy_build(model_cfg, in_dim, out_dims, seed):
        built.append(dict(out_dims))
        return real_build(model_cfg, in_dim, out_dims, seed)

    def spy_fit(model, sub, loss, train_cfg, **kw):
        trained.append((id(model), list(loss.kinds), list(sub.splits["train"].y)))
        return real_fit(model, sub, loss, train_cfg, **kw)

    monkeypatch.setattr(baselines, "build_model", spy_build)
    monkeypatch.setattr(baselines, "fit", spy_fit)
    result = baselines.single_task_baselines(data, cfg.model, cfg.train, device="cpu")

    assert built == [{"species": 3}, {"body_mass": 1}, {"sex": 1}]
    assert [t[1] for t in trained] == [["species"], ["body_mass"], ["sex"]]
    assert [t[2] for t in trained] == [["species"], ["body_mass"], ["sex"]]
    assert len({t[0] for t in trained}) == 3  # three distinct models
    assert set(result.epochs) == {"species", "body_mass", "sex"}
    assert all(1 <= e <= 4 for e in result.epochs.values())

    # The multi-task model's metrics, minus the aggregates, have exactly the same keys.
    model = build_model(cfg.model, data.preprocessor.n_inputs, data.out_dims, 0)
    fit(model, data, build_loss(cfg.loss, {t.name: t.type for t in data.tasks}), cfg.train)
    mtl = evaluate(model, data, device="cpu")
    assert set(result.metrics) == {k for k in mtl if not k.endswith("/objective")}
    assert all(np.isfinite(v) for v in result.metrics.values())
    assert np.isfinite(delta_m(mtl, result.metrics, data.tasks))


def test_baselines_pass_the_penalties_on(monkeypatch):
    cfg = load_config("penguins", ["train.epochs=1", "train.device=cpu"])
    data = prepare(cfg.data)
    seen = []
    real_fit = baselines.fit

    def spy_fit(model, sub, loss, train_cfg, **kw):
        seen.append((loss.l1, loss.l2, loss.weights))
        return real_fit(model, sub, loss, train_cfg, **kw)

    monkeypatch.setattr(baselines, "fit", spy_fit)
    baselines.single_task_baselines(data, cfg.model, cfg.train, l1=0.01, l2=0.02, device="cpu")
    assert seen == [
        (0.01, 0.02, {"species": 1.0}),
        (0.01, 0.02, {"body_mass": 1.0}),
        (0.01, 0.02, {"sex": 1.0}),
    ]
