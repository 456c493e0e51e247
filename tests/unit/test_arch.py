"""Architectures: every registered one maps inputs to per-task outputs and splits its parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl_core.arch import ARCHS, Architecture, mlp, tower
from mtl_core.arch.shared_bottom import SharedBottom
from mtl_core.config import ModelConfig

OUT_DIMS = {"a": 1, "b": 3, "c": 2}


def _arch(name: str, **kw) -> Architecture:
    torch.manual_seed(0)
    return ARCHS.lookup(name)(6, OUT_DIMS, ModelConfig(arch=name, hidden=[8, 5], **kw))


def test_shared_bottom_is_registered():
    assert ARCHS["shared_bottom"] is SharedBottom
    assert ModelConfig().arch == "shared_bottom"


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_outputs_per_task(name):
    out = _arch(name, head_hidden=4)(torch.randn(9, 6))
    assert list(out) == list(OUT_DIMS)
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (9, n) for t, n in OUT_DIMS.items()}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_shared_and_task_parameters_partition_the_parameters(name):
    arch = _arch(name, norm="layer")
    shared = [id(p) for p in arch.shared_parameters()]
    per_task = {t: [id(p) for p in arch.task_parameters(t)] for t in OUT_DIMS}
    assert shared and all(per_task.values())
    everything = shared + [i for ids in per_task.values() for i in ids]
    assert len(everything) == len(set(everything))  # nothing counted twice
    assert set(everything) == {id(p) for p in arch.parameters()}
    # A task's output depends on the shared parameters and its own, never another task's.
    arch(torch.randn(4, 6))["b"].sum().backward()
    assert all(p.grad is not None for p in arch.shared_parameters())
    assert all(p.grad is not None for p in arch.task_parameters("b"))
    assert all(p.grad is None for t in ("a", "c") for p in arch.task_parameters(t))


def test_mlp_and_tower_helpers():
    cfg = ModelConfig(hidden=[7, 3], norm="batch", dropout=0.1)
    block, width = mlp(5, cfg)
    assert width == 3
    assert [type(m) for m in block] == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Dropout,
    ]
    empty, same = mlp(5, cfg, hidden=[])
    assert same == 5 and len(empty) == 0
    assert isinstance(tower(3, 2, ModelConfig()), nn.Linear)
    deep = tower(3, 2, ModelConfig(head_hidden=4, activation="tanh"))
    assert [type(m) for m in deep] == [nn.Linear, nn.Tanh, nn.Linear]
    assert deep(torch.randn(2, 3)).shape == (2, 2)


def test_base_class_leaves_the_contract_to_subclasses():
    arch = Architecture(3, {"a": 1}, ModelConfig())
    for call in (lambda: arch(torch.zeros(1, 3)), arch.shared_parameters):
        with pytest.raises(NotImplementedError):
            call()
    with pytest.raises(NotImplementedError):
        arch.task_parameters("a")
