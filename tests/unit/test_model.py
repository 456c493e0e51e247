"""The multi-task model: output shapes per task type, shared parameters, options, its spec."""

from __future__ import annotations

import json
import typing

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from mtl_core import inputs
from mtl_core.arch import ACTIVATIONS, ARCHS
from mtl_core.config import DataConfig, FeaturesConfig, ModelConfig
from mtl_core.data import prepare_frame
from mtl_core.errors import DataError
from mtl_core.model import ModelSpec, MultiTaskModel, build_model, model_spec

TASKS = [
    {"name": "bin", "column": "yb", "type": "binary"},
    {"name": "multi", "column": "ym", "type": "multiclass"},
    {"name": "reg", "column": "yr", "type": "regression"},
]


def _spec(
    n_dense: int,
    out_dims: dict[str, int],
    n_numeric: int | None = None,
    cardinalities: list[int] | None = None,
    embedding_dims: list[int] | None = None,
    features: FeaturesConfig | None = None,
    **model,
) -> ModelSpec:
    """A spec built by hand, for models that need no data."""
    return ModelSpec(
        model=ModelConfig(**model).model_dump(mode="json"),
        features=(features or FeaturesConfig()).model_dump(mode="json"),
        n_numeric=n_dense if n_numeric is None else n_numeric,
        n_dense=n_dense,
        cardinalities=cardinalities or [],
        embedding_dims=embedding_dims or [],
        out_dims=out_dims,
    )


def _net(in_dim: int, out_dims: dict[str, int], **model) -> MultiTaskModel:
    return MultiTaskModel(_spec(in_dim, out_dims, **model))


def test_forward_gives_one_output_per_task_sized_by_type(make_frame):
    data = prepare_frame(make_frame(80), DataConfig(source="synthetic", tasks=TASKS), "mem")
    assert data.out_dims == {"bin": 1, "multi": 3, "reg": 1}
    spec = model_spec(ModelConfig(hidden=[8, 4]), FeaturesConfig(), data)
    assert spec.n_dense == data.preprocessor.n_dense and spec.out_dims == data.out_dims
    model = build_model(spec, 0)
    split = data.splits["train"]
    x, c = torch.as_tensor(split.X[:5]), torch.as_tensor(split.C[:5])
    out = model(x, c)
    assert list(out) == ["bin", "multi", "reg"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "bin": (5, 1),
        "multi": (5, 3),
        "reg": (5, 1),
    }
    # Without categorical codes, c may be left out.
    assert all(torch.equal(a, b) for a, b in zip(model(x).values(), out.values(), strict=True))


def test_shared_parameters_are_exactly_the_trunk():
    model = _net(6, {"a": 1, "b": 3}, hidden=[8, 4], norm="layer", head_hidden=5)
    assert list(model.encoder.parameters()) == []  # numeric columns pass straight through
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.body.trunk.parameters()}
    heads = {id(p) for t in ("a", "b") for p in model.task_parameters(t)}
    assert not shared & heads
    assert shared | heads == {id(p) for p in model.parameters()}
    # Only the trunk and task a's head get a gradient from task a's output.
    model(torch.randn(4, 6))["a"].sum().backward()
    assert all(p.grad is not None for p in model.shared_parameters())
    assert all(p.grad is not None for p in model.task_parameters("a"))
    assert all(p.grad is None for p in model.task_parameters("b"))


def test_encoder_parameters_are_shared_too():
    spec = _spec(
        4,
        {"a": 1, "b": 2},
        n_numeric=2,
        cardinalities=[5, 3],
        embedding_dims=[3, 2],
        features=FeaturesConfig(numeric_embedding="periodic", numeric_embedding_dim=3),
        hidden=[8],
    )
    model = MultiTaskModel(spec)
    encoder = {id(p) for p in model.encoder.parameters()}
    assert {id(t.weight) for t in model.encoder.tables} <= encoder
    assert len(encoder) > 2  # the periodic embedding's frequencies and linear layer too
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == encoder | {id(p) for p in model.body.trunk.parameters()}
    heads = {id(p) for t in ("a", "b") for p in model.task_parameters(t)}
    assert not shared & heads
    assert shared | heads == {id(p) for p in model.parameters()}
    c = torch.tensor([[0, 1], [4, 2], [2, 0]])
    model(torch.randn(3, 4), c)["b"].sum().backward()
    assert all(p.grad is not None for p in model.shared_parameters())
    assert all(p.grad is None for p in model.task_parameters("a"))


def test_empty_trunk_is_the_identity():
    model = _net(6, {"a": 2}, hidden=[])
    assert model.shared_parameters() == []
    assert model.body.heads["a"].in_features == 6


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_options_build_and_run(activation, norm):
    model = _net(
        5,
        {"a": 1, "b": 4},
        hidden=[8, 6],
        activation=activation,
        dropout=0.2,
        norm=norm,
        head_hidden=3,
    )
    trunk = list(model.body.trunk)
    assert sum(isinstance(m, nn.Linear) for m in trunk) == 2
    assert sum(isinstance(m, ACTIVATIONS[activation]) for m in trunk) == 2
    assert sum(isinstance(m, nn.Dropout) for m in trunk) == 2
    assert sum(isinstance(m, nn.BatchNorm1d) for m in trunk) == (2 if norm == "batch" else 0)
    assert sum(isinstance(m, nn.LayerNorm) for m in trunk) == (2 if norm == "layer" else 0)
    head = model.body.heads["b"]
    assert isinstance(head, nn.Sequential)
    assert (head[0].in_features, head[0].out_features, head[-1].out_features) == (6, 3, 4)
    out = model(torch.randn(7, 5))
    assert out["b"].shape == (7, 4)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_no_dropout_or_norm_layers_unless_asked():
    model = _net(5, {"a": 1}, hidden=[8])
    assert [type(m) for m in model.body.trunk] == [nn.Linear, nn.ReLU]
    assert isinstance(model.body.heads["a"], nn.Linear)


def test_unknown_activation_lists_known_ones():
    # The config refuses it before any layer is built.
    with pytest.raises(pydantic.ValidationError, match="swish") as info:
        ModelConfig(activation="swish")
    for name in ACTIVATIONS:
        assert name in str(info.value)


def test_config_activations_match_the_registry():
    allowed = typing.get_args(ModelConfig.model_fields["activation"].annotation)
    assert set(allowed) == set(ACTIVATIONS)


def test_build_model_is_seeded():
    spec = _spec(4, {"a": 1}, hidden=[8])

    def weights(seed):
        return [p.detach().clone() for p in build_model(spec, seed).parameters()]

    assert all(torch.equal(a, b) for a, b in zip(weights(1), weights(1), strict=True))
    assert not torch.equal(weights(1)[0], weights(2)[0])


# --------------------------------------------------------------------------- the spec

EMBEDDINGS = ["none", "periodic", "piecewise_linear"]


@pytest.fixture
def mixed_frame(make_frame):
    df = make_frame(120)
    df["flag"] = (df["x1"] > 0).astype(float)  # two values: a one-bin piecewise-linear column
    return df


def _data(df, features: FeaturesConfig):
    return prepare_frame(df, DataConfig(source="synthetic", tasks=TASKS), "mem", features)


@pytest.mark.parametrize("numeric_embedding", EMBEDDINGS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("categorical", ["onehot", "embedding"])
def test_spec_json_round_trip_rebuilds_the_same_model(
    mixed_frame, arch, numeric_embedding, categorical
):
    features = FeaturesConfig(
        categorical=categorical,
        numeric_embedding=numeric_embedding,
        numeric_embedding_dim=4,
        n_bins=6,
        n_frequencies=5,
    )
    data = _data(mixed_frame, features)
    cfg = ModelConfig(arch=arch, hidden=[8, 6], norm="batch", head_hidden=3)
    spec = model_spec(cfg, features, data)
    model = build_model(spec, 0).eval()

    text = spec.to_json()
    assert json.loads(text)["model"]["arch"] == arch
    again = ModelSpec.from_json(text)
    assert again == spec
    rebuilt = build_model(again, seed=1).eval()  # other initial weights...
    assert rebuilt.encoder.out_dim == model.encoder.out_dim
    rebuilt.load_state_dict(model.state_dict())  # ...replaced by the original's, strictly

    split = data.splits["test"]
    x, c = torch.as_tensor(split.X), torch.as_tensor(split.C)
    with torch.no_grad():
        a, b = model(x, c), rebuilt(x, c)
    assert list(a) == list(b) == ["bin", "multi", "reg"]
    for task in a:
        torch.testing.assert_close(a[task], b[task], rtol=0, atol=0)


@pytest.mark.parametrize("numeric_embedding", EMBEDDINGS)
def test_model_spec_takes_its_sizes_from_the_data(mixed_frame, numeric_embedding):
    features = FeaturesConfig(
        categorical="embedding", numeric_embedding=numeric_embedding, n_bins=6
    )
    data = _data(mixed_frame, features)
    pre = data.preprocessor
    spec = model_spec(ModelConfig(), features, data)
    assert (spec.n_numeric, spec.n_dense) == (pre.n_numeric, pre.n_dense) == (4, 4)
    assert spec.cardinalities == pre.cardinalities == [4]
    assert spec.embedding_dims == pre.embedding_dims
    assert spec.out_dims == data.out_dims
    assert spec.features == features.model_dump(mode="json")
    if numeric_embedding != "piecewise_linear":
        assert spec.bins is None
        return
    # Bins come from the training split, per numeric column.
    assert len(spec.bins) == 4
    x = data.splits["train"].X
    for j, edges in enumerate(spec.bins):
        assert edges == sorted(edges) and 2 <= len(edges) <= 6 + 1
        assert edges[0] == pytest.approx(x[:, j].min()) and edges[-1] == pytest.approx(
            x[:, j].max()
        )
    assert len(spec.bins[pre.numeric.index("flag")]) == 2


def test_model_spec_refuses_embedding_tables_over_the_memory_budget(mixed_frame, monkeypatch):
    data = _data(mixed_frame, FeaturesConfig(categorical="embedding"))
    monkeypatch.setattr(inputs, "memory_budget_bytes", lambda: 10)
    with pytest.raises(DataError, match="column 'cat'"):
        model_spec(ModelConfig(), FeaturesConfig(categorical="embedding"), data)


def test_outputs_depend_on_the_codes(mixed_frame):
    features = FeaturesConfig(categorical="embedding")
    data = _data(mixed_frame, features)
    model = build_model(model_spec(ModelConfig(hidden=[8]), features, data), 0)
    x = torch.as_tensor(data.splits["test"].X[:4])
    codes = torch.as_tensor(data.splits["test"].C[:4])
    with torch.no_grad():
        a = model(x, codes)["reg"]
        b = model(x, torch.zeros_like(codes))["reg"]  # every colour unseen
    assert not torch.allclose(a, b)
    assert np.isfinite(b.numpy()).all()
