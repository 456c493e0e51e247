"""The shared-trunk network: output shapes per task type, shared parameters, options."""

from __future__ import annotations

import typing

import pytest
import torch
from torch import nn

from mtl_core.config import DataConfig, ModelConfig
from mtl_core.data import prepare_frame
from mtl_core.model import ACTIVATIONS, MultiTaskNet, build_model


def test_forward_gives_one_output_per_task_sized_by_type(make_frame):
    tasks = [
        {"name": "bin", "column": "yb", "type": "binary"},
        {"name": "multi", "column": "ym", "type": "multiclass"},
        {"name": "reg", "column": "yr", "type": "regression"},
    ]
    data = prepare_frame(make_frame(80), DataConfig(source="synthetic", tasks=tasks), "mem")
    assert data.out_dims == {"bin": 1, "multi": 3, "reg": 1}
    model = build_model(ModelConfig(hidden=[8, 4]), data.preprocessor.n_inputs, data.out_dims, 0)
    x = torch.as_tensor(data.splits["train"].X[:5])
    out = model(x)
    assert list(out) == ["bin", "multi", "reg"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "bin": (5, 1),
        "multi": (5, 3),
        "reg": (5, 1),
    }


def test_shared_parameters_are_exactly_the_trunk():
    model = MultiTaskNet(6, {"a": 1, "b": 3}, hidden=[8, 4], norm="layer", head_hidden=5)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.trunk.parameters()}
    heads = {id(p) for t in ("a", "b") for p in model.task_parameters(t)}
    assert not shared & heads
    assert shared | heads == {id(p) for p in model.parameters()}
    # Only the trunk and task a's head get a gradient from task a's output.
    model(torch.randn(4, 6))["a"].sum().backward()
    assert all(p.grad is not None for p in model.shared_parameters())
    assert all(p.grad is not None for p in model.task_parameters("a"))
    assert all(p.grad is None for p in model.task_parameters("b"))


def test_empty_trunk_is_the_identity():
    model = MultiTaskNet(6, {"a": 2}, hidden=[])
    assert model.shared_parameters() == []
    assert model.heads["a"].in_features == 6


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_options_build_and_run(activation, norm):
    model = MultiTaskNet(
        5,
        {"a": 1, "b": 4},
        hidden=[8, 6],
        activation=activation,
        dropout=0.2,
        norm=norm,
        head_hidden=3,
    )
    trunk = list(model.trunk)
    assert sum(isinstance(m, nn.Linear) for m in trunk) == 2
    assert sum(isinstance(m, ACTIVATIONS[activation]) for m in trunk) == 2
    assert sum(isinstance(m, nn.Dropout) for m in trunk) == 2
    assert sum(isinstance(m, nn.BatchNorm1d) for m in trunk) == (2 if norm == "batch" else 0)
    assert sum(isinstance(m, nn.LayerNorm) for m in trunk) == (2 if norm == "layer" else 0)
    head = model.heads["b"]
    assert isinstance(head, nn.Sequential)
    assert (head[0].in_features, head[0].out_features, head[-1].out_features) == (6, 3, 4)
    out = model(torch.randn(7, 5))
    assert out["b"].shape == (7, 4)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_no_dropout_or_norm_layers_unless_asked():
    model = MultiTaskNet(5, {"a": 1}, hidden=[8])
    assert [type(m) for m in model.trunk] == [nn.Linear, nn.ReLU]
    assert isinstance(model.heads["a"], nn.Linear)


def test_unknown_activation_lists_known_ones():
    with pytest.raises(KeyError, match="swish") as info:
        MultiTaskNet(5, {"a": 1}, activation="swish")
    for name in ACTIVATIONS:
        assert name in str(info.value)


def test_config_activations_match_the_registry():
    allowed = typing.get_args(ModelConfig.model_fields["activation"].annotation)
    assert set(allowed) == set(ACTIVATIONS)


def test_build_model_is_seeded():
    cfg = ModelConfig(hidden=[8])

    def weights(seed):
        return [p.detach().clone() for p in build_model(cfg, 4, {"a": 1}, seed).parameters()]

    assert all(torch.equal(a, b) for a, b in zip(weights(1), weights(1), strict=True))
    assert not torch.equal(weights(1)[0], weights(2)[0])
