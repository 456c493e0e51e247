"""Preprocessor: identical transforms after save/load, unseen categories, no untrusted types."""

from __future__ import annotations

import fractions
import json

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from mtl_core import preprocess
from mtl_core.config import DataConfig, ExperimentConfig, FeaturesConfig
from mtl_core.data import prepare_frame
from mtl_core.errors import DataError
from mtl_core.preprocess import JSON_FILE, SKOPS_FILE, Preprocessor
from mtl_core.train import train_from_config

TASKS = [
    {"name": "bin", "column": "yb", "type": "binary"},
    {"name": "multi", "column": "ym", "type": "multiclass"},
    {"name": "reg", "column": "yr", "type": "regression"},
]
COMBINATIONS = [
    FeaturesConfig(numeric=numeric, categorical=categorical)
    for numeric in ("standard", "quantile")
    for categorical in ("onehot", "embedding")
]


def _ids(settings: FeaturesConfig) -> str:
    return f"{settings.numeric}-{settings.categorical}"


def _prepare(frame: pd.DataFrame, settings: FeaturesConfig):
    return prepare_frame(frame, DataConfig(source="synthetic", tasks=TASKS), "mem", settings)


def _with_gaps(make_frame) -> pd.DataFrame:
    df = make_frame(150)
    df.loc[df.index[::7], "x2"] = np.nan  # imputed
    df.loc[df.index[::11], "cat"] = None  # its own level, "<missing>"
    return df


# --------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("settings", COMBINATIONS, ids=_ids)
def test_save_load_round_trip_gives_identical_transforms(tmp_path, make_frame, settings):
    data = _prepare(_with_gaps(make_frame), settings)
    pre = data.preprocessor
    pre.save(tmp_path / "pre")
    # No pickle anywhere: the settings and tasks as JSON, the transformers as skops.
    assert sorted(p.name for p in (tmp_path / "pre").iterdir()) == sorted([JSON_FILE, SKOPS_FILE])
    meta = json.loads((tmp_path / "pre" / JSON_FILE).read_text())
    assert meta["settings"] == settings.model_dump(mode="json")

    loaded = Preprocessor.load(tmp_path / "pre")
    assert (loaded.features, loaded.numeric, loaded.categorical) == (
        pre.features,
        pre.numeric,
        pre.categorical,
    )
    assert loaded.settings == settings
    assert loaded.tasks == pre.tasks
    assert (loaded.n_dense, loaded.n_numeric) == (pre.n_dense, pre.n_numeric)
    assert loaded.cardinalities == pre.cardinalities
    assert loaded.embedding_dims == pre.embedding_dims
    for split in data.splits.values():
        x0, c0 = pre.transform(split.rows)
        x1, c1 = loaded.transform(split.rows)
        assert x1.dtype == np.float32 and c1.dtype == np.int64
        np.testing.assert_array_equal(x1, x0)
        np.testing.assert_array_equal(c1, c0)
        np.testing.assert_array_equal(x0, split.X)
        np.testing.assert_array_equal(c0, split.C)
    # Predictions decode the same way too.
    rng = np.random.default_rng(0)
    outputs = {t.name: rng.normal(size=(5, t.out_dim)) for t in pre.tasks}
    pd.testing.assert_frame_equal(loaded.predictions(outputs), pre.predictions(outputs))


@pytest.mark.parametrize("settings", COMBINATIONS, ids=_ids)
def test_unseen_category_maps_to_code_zero_or_all_zero_one_hot(tmp_path, make_frame, settings):
    data = _prepare(make_frame(120), settings)
    pre = data.preprocessor
    pre.save(tmp_path)
    rows = data.splits["test"].rows.head(3).copy()
    rows["cat"] = ["red", "purple", None]  # a seen colour, a new one, and a new "<missing>"
    for p in (pre, Preprocessor.load(tmp_path)):
        x, c = p.transform(rows)
        assert not np.isnan(x).any()
        if settings.categorical == "embedding":
            assert x.shape == (3, 3)  # rid, x1, x2: the colour is a code, not columns
            assert c[0, 0] > 0
            assert p.codes.categories_[0][c[0, 0] - 1] == "red"
            assert c[1:, 0].tolist() == [0, 0]
        else:
            assert c.shape == (3, 0)
            onehot = x[:, p.n_numeric :]
            assert onehot.shape[1] == 3  # one column per training colour: blue, green, red
            np.testing.assert_array_equal(onehot[0], [0.0, 0.0, 1.0])
            np.testing.assert_array_equal(onehot[1:], 0.0)


@pytest.mark.parametrize(
    "untrusted",
    [fractions.Fraction(1, 3), print],
    ids=["fractions.Fraction", "builtins.print"],
)
def test_loading_an_untrusted_type_is_refused(tmp_path, make_frame, untrusted):
    data = _prepare(make_frame(60), FeaturesConfig())
    data.preprocessor.save(tmp_path)
    path = tmp_path / SKOPS_FILE
    sio.dump({"dense": untrusted, "codes": None}, path)
    name = sio.get_untrusted_types(file=path)[0]
    with pytest.raises(DataError) as info:
        Preprocessor.load(tmp_path)
    msg = str(info.value)
    assert str(path) in msg
    assert name in msg
    assert "untrusted" in msg


def test_transform_names_a_missing_or_non_numeric_column(make_frame):
    data = _prepare(make_frame(60), FeaturesConfig())
    rows = data.splits["test"].rows
    with pytest.raises(DataError, match=r"new\.csv: missing feature column\(s\) \['x2'\]"):
        data.preprocessor.transform(rows.drop(columns="x2"), "new.csv")
    text = rows.assign(x1=rows["x1"].astype(object))
    text.iloc[0, text.columns.get_loc("x1")] = "twelve"
    with pytest.raises(DataError, match="column 'x1' must be numeric"):
        data.preprocessor.transform(text, "new.csv")


# --------------------------------------------------------------------------- many levels

N_LEVELS = 50_000


@pytest.fixture(scope="module")
def many_levels() -> pd.DataFrame:
    """50,000 rows whose ``big`` column has 50,000 levels (an id-like column)."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x": rng.normal(size=N_LEVELS),
            "big": pd.Series(np.arange(N_LEVELS)).map("u{}".format),
            "y": rng.normal(size=N_LEVELS),
        }
    )


def _big_config(categorical: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "data": {
                "source": "synthetic",
                "tasks": [{"name": "r", "column": "y", "type": "regression"}],
            },
            "features": {"categorical": categorical},
            "model": {"hidden": [8]},
            "train": {"epochs": 1, "batch_size": 4096, "device": "cpu"},
        }
    )


def test_many_levels_are_embedded_without_a_one_hot_matrix(many_levels, monkeypatch):
    assert many_levels["big"].nunique() == N_LEVELS

    def no_one_hot(*args, **kwargs):
        raise AssertionError("a one-hot encoder was built")

    monkeypatch.setattr(preprocess, "OneHotEncoder", no_one_hot)
    cfg = _big_config("embedding")
    data = prepare_frame(many_levels, cfg.data, "mem", cfg.features)
    pre = data.preprocessor
    train = data.splits["train"]
    assert pre.n_dense == 1 and train.X.shape == (len(train), 1)  # x only
    assert train.C.shape == (len(train), 1) and train.C.dtype == np.int64
    # One code per training level: the 35,000 rows of the training split, all distinct.
    n_codes = pre.cardinalities[0]
    assert n_codes == len(train) + 1 == 35_001
    assert train.C.min() == 1 and train.C.max() == n_codes - 1
    assert len(np.unique(train.C)) == n_codes - 1
    for held_out in (data.splits["val"], data.splits["test"]):
        assert held_out.C.shape == (len(held_out), 1)
        assert (held_out.C == 0).all()  # levels never seen in training: the reserved code
    assert pre.embedding_dims == [64]  # the fastai rule, capped

    model, result = train_from_config(cfg, data)
    assert result.epochs_run == 1
    assert np.isfinite(result.history[0].train_loss)
    table = model.encoder.tables[0]
    assert tuple(table.weight.shape) == (n_codes, 64)


def test_many_levels_one_hot_is_refused_naming_the_column(many_levels, monkeypatch):
    monkeypatch.setattr(preprocess, "memory_budget_bytes", lambda: 1 << 20)
    cfg = _big_config("onehot")
    with pytest.raises(DataError) as info:
        prepare_frame(many_levels, cfg.data, "mem", cfg.features)
    msg = str(info.value)
    assert "'big'" in msg
    assert "features.categorical=embedding" in msg
    assert "\n" not in msg


def test_switching_to_one_hot_later_is_refused_too(make_frame, monkeypatch):
    data = _prepare(make_frame(100), FeaturesConfig(categorical="embedding"))
    monkeypatch.setattr(preprocess, "memory_budget_bytes", lambda: 16)
    with pytest.raises(DataError, match="column 'cat'"):
        data.with_features(FeaturesConfig(categorical="onehot"))
