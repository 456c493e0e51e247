"""Architectures: shapes, gates, who shares what, learning, serving and config, per registry entry.

Generic tests run over every entry of ``ARCHS``; ``CASES`` adds the expert
architectures' non-default shapes (several PLE levels, several task experts).
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch

from mtl_core.arch import ARCHS
from mtl_core.arch.mmoe import MMoE
from mtl_core.arch.ple import PLE
from mtl_core.config import (
    DataConfig,
    ExperimentConfig,
    FeaturesConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from mtl_core.data import PreparedData, prepare, prepare_frame
from mtl_core.errors import ConfigError
from mtl_core.integrations.serving import save_pyfunc
from mtl_core.metrics import evaluate
from mtl_core.model import build_model, model_spec
from mtl_core.train import predict_outputs, train_from_config

# Every registered architecture with its defaults, plus the expert architectures' other shapes.
CASES = [(name, {}) for name in sorted(ARCHS)] + [
    ("mmoe", {"n_experts": 1}),
    ("ple", {"n_levels": 2}),
    ("ple", {"n_levels": 3, "n_task_experts": 2}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]
# The columns of conftest's frame(): a binary, a 3-class and a regression target.
TASKS = [
    {"name": "bin", "column": "yb", "type": "binary"},
    {"name": "multi", "column": "ym", "type": "multiclass"},
    {"name": "reg", "column": "yr", "type": "regression"},
]


def _data(make_frame, n: int = 80, **features) -> PreparedData:
    """The conftest frame with a binary, a 3-class and a regression task."""
    cfg = DataConfig(source="synthetic", tasks=TASKS)
    return prepare_frame(make_frame(n), cfg, "mem", FeaturesConfig(**features))


def _model(data: PreparedData, arch: str, seed: int = 0, **kw):
    cfg = ModelConfig(arch=arch, **{"hidden": [8, 4], **kw})
    return build_model(model_spec(cfg, FeaturesConfig(), data), seed)


def _inputs(data: PreparedData, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    s = data.splits["train"]
    return torch.as_tensor(s.X[:n]), torch.as_tensor(s.C[:n])


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("head_hidden", [0, 5])
@pytest.mark.parametrize(("arch", "kw"), CASES, ids=IDS)
def test_one_output_per_task_sized_by_type_with_its_tower(make_frame, arch, kw, head_hidden):
    data = _data(make_frame)
    assert data.out_dims == {"bin": 1, "multi": 3, "reg": 1}
    model = _model(data, arch, head_hidden=head_hidden, **kw)
    out = model(*_inputs(data, 5))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "bin": (5, 1),
        "multi": (5, 3),
        "reg": (5, 1),
    }
    for task, n_out in data.out_dims.items():
        layers = [m for m in model.body.heads[task].modules() if isinstance(m, torch.nn.Linear)]
        widths = [(m.in_features, m.out_features) for m in layers]
        expected = [(4, n_out)] if not head_hidden else [(4, head_hidden), (head_hidden, n_out)]
        assert widths == expected  # the tower reads the 4-wide expert (or trunk) output


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_options_build_and_run(make_frame, arch, norm):
    data = _data(make_frame, categorical="embedding")
    model = _model(data, arch, norm=norm, dropout=0.2, head_hidden=3, activation="gelu")
    model.train()
    out = model(*_inputs(data, 7))
    assert all(torch.isfinite(v).all() for v in out.values())
    kinds = {type(m).__name__ for m in model.body.modules()}
    assert ("BatchNorm1d" in kinds, "LayerNorm" in kinds) == (norm == "batch", norm == "layer")


# --------------------------------------------------------------------------- gates


def test_mmoe_gates_are_input_dependent_distributions_over_the_experts(make_frame):
    data = _data(make_frame)
    model = _model(data, "mmoe", n_experts=3)
    z = model.encoder(*_inputs(data))
    weights = model.body.gate_weights(z)
    assert list(weights) == ["bin", "multi", "reg"]
    for w in weights.values():
        assert w.shape == (32, 3)
        assert (w > 0).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones(32))
        assert w.std(dim=0).min() > 1e-3  # the gate reads the input: rows differ


def test_mmoe_gate_on_one_expert_passes_that_expert_through(make_frame):
    data = _data(make_frame)
    body: MMoE = _model(data, "mmoe", n_experts=3).body
    z = torch.randn(6, body.gates["reg"].in_features)
    with torch.no_grad():
        body.gates["reg"].bias.copy_(torch.tensor([0.0, 100.0, 0.0]))  # all weight on expert 1
        torch.testing.assert_close(body(z)["reg"], body.heads["reg"](body.experts[1](z)))


def test_ple_gates_mix_own_then_shared_experts_and_the_shared_gate_mixes_all(make_frame):
    data = _data(make_frame)
    body: PLE = _model(data, "ple", n_levels=3, n_experts=2, n_task_experts=3).body
    levels = body.gate_weights(torch.randn(32, body.levels[0].shared_gate.in_features))
    assert len(levels) == 3
    for k, (task_w, shared_w) in enumerate(levels):
        assert list(task_w) == ["bin", "multi", "reg"]
        for w in task_w.values():
            assert w.shape == (32, 3 + 2)
            torch.testing.assert_close(w.sum(dim=1), torch.ones(32))
        if k == 2:
            assert shared_w is None  # the top level has no shared gate
        else:
            assert shared_w.shape == (32, 2 + 3 * 3)
            torch.testing.assert_close(shared_w.sum(dim=1), torch.ones(32))


def test_ple_task_gate_on_its_own_expert_passes_it_through(make_frame):
    data = _data(make_frame)
    body: PLE = _model(data, "ple", n_experts=2, n_task_experts=2).body
    level = body.levels[0]
    z = torch.randn(6, level.task_gates["bin"].in_features)
    with torch.no_grad():
        # Columns are the task's own experts, then the shared ones: all weight on own expert 1.
        level.task_gates["bin"].bias.copy_(torch.tensor([0.0, 100.0, 0.0, 0.0]))
        own = level.task_experts["bin"][1](z)
        torch.testing.assert_close(body(z)["bin"], body.heads["bin"](own))
        level.task_gates["bin"].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0]))  # shared 1
        torch.testing.assert_close(body(z)["bin"], body.heads["bin"](level.shared[1](z)))


# --------------------------------------------------------------------------- sharing


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def _reached(p: torch.nn.Parameter) -> bool:
    # In the backward graph at all: a dead ReLU can zero a gradient that still depends on p.
    return p.grad is not None


@pytest.mark.parametrize(("arch", "kw"), CASES, ids=IDS)
def test_shared_and_task_parameters_partition_the_body(make_frame, arch, kw):
    data = _data(make_frame)
    body = _model(data, arch, head_hidden=3, **kw).body
    shared = _ids(body.shared_parameters())
    per_task = [_ids(body.task_parameters(t)) for t in data.out_dims]
    groups = [shared, *per_task]
    assert sum(len(g) for g in groups) == len(set().union(*groups))  # no overlap
    assert set().union(*groups) == _ids(body.parameters())
    assert all(per_task)  # every task owns at least its tower


@pytest.mark.parametrize(("arch", "kw"), CASES, ids=IDS)
def test_a_task_reaches_every_shared_parameter_and_only_its_own(make_frame, arch, kw):
    """Shared = every task's output depends on it; task t's = only t's output does."""
    data = _data(make_frame)
    model = _model(data, arch, head_hidden=3, **kw)
    x, c = _inputs(data)
    for task in data.out_dims:
        model.zero_grad(set_to_none=True)
        model(x, c)[task].sum().backward()
        assert all(_reached(p) for p in model.body.shared_parameters())
        assert all(_reached(p) for p in model.task_parameters(task))
        for other in data.out_dims:
            if other != task:
                assert not any(_reached(p) for p in model.task_parameters(other)), other


def test_ple_shares_lower_task_experts_that_feed_a_shared_gate(make_frame):
    data = _data(make_frame)
    body: PLE = _model(data, "ple", n_levels=3).body
    shared, own = _ids(body.shared_parameters()), _ids(body.task_parameters("bin"))
    low, mid, top = body.levels
    assert _ids(low.task_experts["bin"].parameters()) <= shared
    assert _ids(low.task_gates["bin"].parameters()) <= shared
    assert _ids(mid.task_experts["bin"].parameters()) <= shared
    assert _ids(mid.task_gates["bin"].parameters()) <= own  # feeds only the top task experts
    assert _ids(top.task_experts["bin"].parameters()) <= own
    assert _ids(top.task_gates["bin"].parameters()) <= own
    assert _ids(body.heads["bin"].parameters()) <= own


# --------------------------------------------------------------------------- learning

# 0.2-1.6 s per case on one CPU thread (3 PLE levels the slowest).
LEARN = [
    "data.synthetic.n_rows=600",
    "data.synthetic.dim=10",
    "model.hidden=[16]",
    "model.n_experts=3",
    "train.epochs=10",
    "train.batch_size=64",
    "train.lr=0.01",
    "train.device=cpu",
]


@pytest.mark.parametrize(("arch", "kw"), CASES, ids=IDS)
def test_every_architecture_learns_the_synthetic_tasks(arch, kw):
    cfg = load_config("default", [*LEARN, f"model.arch={arch}", *_overrides(kw)])
    data = prepare(cfg.data, cfg.features)
    model, result = train_from_config(cfg, data)
    m = evaluate(model, data, splits=("test",), device="cpu")
    # Measured (torch 2.13 CPU, train.seed 0-2; 90 test rows): R² shared_bottom 0.964-0.967,
    # mmoe 0.970-0.974, mmoe with 1 expert 0.962-0.968, ple 0.960-0.976, ple with 2 levels
    # 0.968-0.972, ple with 3 levels and 2 task experts 0.943-0.971; AUC 0.974-0.998 for all;
    # accuracy 0.922-0.967 (majority 0.500); the last epoch's train loss 0.03-0.16x the
    # first's. The training mean scores R² -0.022 on test; a constant score has AUC 0.5.
    y = data.splits["test"].y
    majority = max(np.mean(y["y1_positive"]), 1 - np.mean(y["y1_positive"]))
    assert _constant_r2(data, "y0_value") < 0.01
    assert m["test/y0_value/r2"] > 0.85
    assert m["test/y1_positive/auc"] > 0.9
    assert m["test/y1_positive/accuracy"] > majority + 0.25
    assert result.history[-1].train_loss < 0.4 * result.history[0].train_loss


def _overrides(kw: dict) -> list[str]:
    return [f"model.{k}={v}" for k, v in kw.items()]


def _constant_r2(data: PreparedData, task: str) -> float:
    """Test R² of predicting the training mean (what a model that learned nothing does)."""
    spec = next(t for t in data.tasks if t.name == task)
    y = data.splits["test"].y[task]
    y = y[~np.isnan(y)]
    return spec.metrics(y, np.zeros((len(y), 1)))["r2"]  # 0 = the mean, standardised


# --------------------------------------------------------------------------- serving


@pytest.mark.parametrize(("arch", "kw"), CASES, ids=IDS)
def test_pyfunc_round_trip_predicts_what_the_trained_model_does(make_frame, tmp_path, arch, kw):
    data = _data(make_frame, n=120, categorical="embedding")
    cfg = ExperimentConfig(
        data=DataConfig(source="synthetic", tasks=TASKS),
        features=FeaturesConfig(categorical="embedding"),
        model=ModelConfig(arch=arch, hidden=[8], head_hidden=4, **kw),
        train=TrainConfig(epochs=2, batch_size=32, device="cpu"),
    )
    model, _ = train_from_config(cfg, data)
    rows = data.splits["test"].rows.head(5)
    save_pyfunc(tmp_path / "m", model, data.preprocessor, rows)
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    s = data.splits["test"]
    expected = data.preprocessor.predictions(predict_outputs(model, s.X[:5], s.C[:5], "cpu"))
    got = loaded.predict(rows)
    assert {"bin", "multi", "reg"} <= set(got.columns)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("arch", "key"),
    [("mmoe", "n_experts"), ("ple", "n_experts"), ("ple", "n_task_experts"), ("ple", "n_levels")],
)
def test_expert_counts_below_one_are_refused_naming_the_key(arch, key):
    with pytest.raises(ConfigError) as info:
        load_config("default", [f"model.arch={arch}", f"model.{key}=0"])
    msg = str(info.value)
    assert f"model.{key}" in msg
    assert "\n" not in msg


def test_an_unknown_architecture_lists_the_known_ones():
    for overrides in (["model.arch=moe"], ["search.arch=[mmoe, moe]"]):
        with pytest.raises(ConfigError, match="moe") as info:
            load_config("default", overrides)
        assert all(name in str(info.value) for name in ("mmoe", "ple", "shared_bottom"))
    with pytest.raises(ConfigError, match="model.arch: unknown architecture 'moe'"):
        ARCHS.lookup("moe")
