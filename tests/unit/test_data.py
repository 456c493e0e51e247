"""Data: bad inputs fail early with named DataErrors; sources, splits and preprocessing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtl_core.config import DataConfig, FeaturesConfig, SyntheticConfig, load_config
from mtl_core.data import (
    fingerprint,
    load_penguins,
    make_synthetic,
    prepare,
    prepare_frame,
    read_table,
)
from mtl_core.errors import DataError
from mtl_core.tasks.binary import BinaryTask
from mtl_core.tasks.multiclass import MulticlassTask
from mtl_core.tasks.regression import RegressionTask

# --------------------------------------------------------------------------- bad input


@pytest.fixture
def state(tmp_path, monkeypatch):
    """An empty state folder; a failing ``prepare`` must leave it empty."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("MTL_STATE_DIR", str(path))
    return path


def _write_csv(path, frame):
    frame.to_csv(path, index=False)
    return path


def _missing_column(d, f):
    return _write_csv(d / "data.csv", f.drop(columns="ym")), "'ym'"


def _single_class(d, f):
    return _write_csv(d / "data.csv", f.assign(yb=1)), "'yb'"


def _non_numeric_regression(d, f):
    yr = f["yr"].astype(object)
    yr.iloc[7] = "n/a (broken sensor)"
    return _write_csv(d / "data.csv", f.assign(yr=yr)), "'yr'"


def _no_labels_left(d, f):
    return _write_csv(d / "data.csv", f.assign(yb=np.nan, ym=np.nan, yr=np.nan)), "'yb'"


def _all_missing_feature(d, f):
    return _write_csv(d / "data.csv", f.assign(x2=np.nan)), "'x2'"


def _binary_with_three_classes(d, f):
    return _write_csv(d / "data.csv", f.assign(yb=np.arange(len(f)) % 3)), "'yb'"


def _missing_feature(d, f):
    return _write_csv(d / "data.csv", f), "'nope'"


@pytest.mark.parametrize(
    ("build", "column", "expected"),
    [
        (_missing_column, "ym", "not found"),
        (_single_class, "yb", "1 class(es)"),
        (_non_numeric_regression, "yr", "must be numeric"),
        (_no_labels_left, None, "no rows left"),
        (_all_missing_feature, "x2", "entirely missing"),
        (_binary_with_three_classes, "yb", "use type 'multiclass'"),
        (_missing_feature, "nope", "not found"),
    ],
    ids=lambda v: getattr(v, "__name__", None) or str(v),
)
def test_bad_data_is_a_data_error_naming_file_and_column(
    tmp_path, state, make_frame, file_config, build, column, expected
):
    path, quoted = build(tmp_path, make_frame(60))
    features = ["x1", "x2", "cat", "nope"] if column == "nope" else None
    with pytest.raises(DataError) as info:
        prepare(file_config(path, features=features))
    msg = str(info.value)
    assert str(path) in msg
    assert quoted in msg
    assert expected in msg
    assert "\n" not in msg
    assert list(state.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == sorted(["state", path.name])


def test_no_labels_left_names_every_target(tmp_path, state, make_frame, file_config):
    path, _ = _no_labels_left(tmp_path, make_frame(30))
    with pytest.raises(DataError) as info:
        prepare(file_config(path))
    for col in ("yb", "ym", "yr"):
        assert f"'{col}'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("absent.csv", None, "not found"),
        (
            "garbage.csv",
            bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
            "cannot read data",
        ),
        ("fake.parquet", b"a,b\n1,2\n", "cannot read data"),
        ("empty.csv", b"", "cannot read data"),
        ("data.json", b"{}", "expected a .csv or .parquet"),
    ],
)
def test_unreadable_file_is_a_data_error(tmp_path, state, file_config, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as info:
        prepare(file_config(path))
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert list(state.iterdir()) == []


def test_feature_that_is_also_a_target_is_rejected(tmp_path, make_frame, file_config):
    path = _write_csv(tmp_path / "d.csv", make_frame(40))
    with pytest.raises(DataError, match=r"\['yr'\] are both a feature and a target"):
        prepare(file_config(path, features=["x1", "yr"]))


def test_two_tasks_on_one_target_column_are_rejected(tmp_path, make_frame, file_config):
    path = _write_csv(tmp_path / "d.csv", make_frame(40))
    tasks = [
        {"name": "a", "column": "yr", "type": "regression"},
        {"name": "b", "column": "yr", "type": "regression"},
    ]
    with pytest.raises(DataError, match=r"\['yr'\] are the target of more than one task"):
        prepare(file_config(path, tasks=tasks))


# --------------------------------------------------------------------------- file sources


def test_csv_and_parquet_load_the_same(tmp_path, make_frame, file_config):
    df = make_frame(120)
    csv = _write_csv(tmp_path / "d.csv", df)
    parquet = tmp_path / "d.parquet"
    df.to_parquet(parquet)
    a, b = prepare(file_config(csv)), prepare(file_config(parquet))
    assert a.n_rows == b.n_rows == 120
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(a.splits[split].X, b.splits[split].X, rtol=1e-6)
    assert a.out_dims == b.out_dims == {"bin": 1, "multi": 3, "reg": 1}
    assert a.source == str(csv)


# --------------------------------------------------------------------------- synthetic


def _synthetic(**kw) -> pd.DataFrame:
    return make_synthetic(SyntheticConfig(**{"n_rows": 2000, "dim": 16, "seed": 0, **kw}))


def test_synthetic_is_seeded():
    a, b = _synthetic(seed=3), _synthetic(seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(_synthetic(seed=4))
    assert list(a.columns) == [f"x{j}" for j in range(16)] + ["y0", "y1"]


def test_synthetic_label_correlation_follows_p():
    # Without sine terms and with little noise, corr(y0, y1) is cos(w1, w2) = p.
    corr = {}
    for p in (0.0, 0.5, 0.9, 1.0):
        f = _synthetic(correlation=p, n_sin=0, noise_std=0.01)
        corr[p] = np.corrcoef(f["y0"], f["y1"])[0, 1]
        assert corr[p] == pytest.approx(p, abs=0.06)
    assert corr[1.0] > corr[0.9] > corr[0.5] > corr[0.0]


def test_synthetic_binarize_gives_balanced_zero_one():
    f = _synthetic(binarize=["y1"], n_rows=2001)
    assert set(f["y1"].unique()) == {0, 1}
    assert f["y1"].mean() == pytest.approx(0.5, abs=0.01)
    assert f["y0"].nunique() > 100  # the other target stays continuous


def test_synthetic_rejects_more_tasks_than_dimensions():
    with pytest.raises(DataError, match="n_tasks"):
        _synthetic(n_tasks=5, dim=4)


# --------------------------------------------------------------------------- penguins


def test_penguins_keep_rows_with_a_missing_sex_label():
    cfg = load_config("penguins").data
    raw = load_penguins()
    assert len(raw) == 344
    data = prepare(cfg)
    assert data.n_rows == 344
    assert sum(len(s.X) for s in data.splits.values()) == 344
    missing_sex = sum(int(np.isnan(s.y["sex"]).sum()) for s in data.splits.values())
    assert missing_sex == raw["sex"].isna().sum() == 11
    for split in data.splits.values():
        assert not np.isnan(split.y["species"]).any()  # those rows still train species
        assert not np.isnan(split.X).any()  # features are imputed
    assert data.out_dims == {"species": 3, "body_mass": 1, "sex": 1}


# --------------------------------------------------------------------------- splits


def _prepare(frame, features: FeaturesConfig | None = None, **kw):
    tasks = [
        {"name": "bin", "column": "yb", "type": "binary"},
        {"name": "reg", "column": "yr", "type": "regression"},
    ]
    cfg = DataConfig(source="synthetic", tasks=tasks, features=["rid", "x1", "x2", "cat"], **kw)
    return prepare_frame(frame, cfg, "mem", features)


def _ids(split):
    return set(split.rows["rid"].astype(int))


def test_splits_are_disjoint_seeded_and_sized(make_frame):
    data = _prepare(make_frame(400))
    ids = {k: _ids(s) for k, s in data.splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(400))
    assert len(ids["val"]) == len(ids["test"]) == 60
    assert {k: _ids(s) for k, s in _prepare(make_frame(400)).splits.items()} == ids
    assert _ids(_prepare(make_frame(400), split_seed=1).splits["test"]) != ids["test"]


def test_splits_are_stratified_on_the_classification_task(make_frame):
    df = make_frame(1000)
    overall = df["yb"].mean()  # about 0.3
    data = _prepare(df)
    for split in data.splits.values():
        assert np.nanmean(split.y["bin"]) == pytest.approx(overall, abs=0.01)


def test_preprocessing_is_fitted_on_train_only(make_frame):
    df = make_frame(300)
    data = _prepare(df, split_seed=2)
    train_ids = sorted(_ids(data.splits["train"]))
    train = df.set_index("rid").loc[train_ids]
    scaler = data.preprocessor.dense.named_transformers_["num"][-1]
    numeric = data.preprocessor.numeric
    assert numeric == ["rid", "x1", "x2"]
    np.testing.assert_allclose(scaler.mean_, [np.mean(train_ids), *train[["x1", "x2"]].mean()])
    # ...and visibly not the all-rows mean.
    assert abs(scaler.mean_[2] - df["x2"].mean()) > 1e-3
    reg = next(t for t in data.tasks if t.name == "reg")
    assert reg.mean == pytest.approx(train["yr"].mean())
    assert reg.std == pytest.approx(train["yr"].std())
    # Standardised on train: mean 0 there, not on the held-out splits.
    assert np.abs(data.splits["train"].X[:, :3].mean(axis=0)).max() < 1e-5
    assert np.nanmean(data.splits["train"].y["reg"]) == pytest.approx(0.0, abs=1e-5)


def test_missing_feature_values_are_imputed_with_the_train_median(make_frame):
    df = make_frame(200)
    df.loc[df.index[::10], "x2"] = np.nan
    data = _prepare(df)
    imputer = data.preprocessor.dense.named_transformers_["num"][0]
    train = df.set_index("rid").loc[sorted(_ids(data.splits["train"]))]
    assert imputer.statistics_[2] == pytest.approx(train["x2"].median())
    assert all(not np.isnan(s.X).any() for s in data.splits.values())


def test_categorical_features_are_one_hot_encoded(make_frame):
    data = _prepare(make_frame(200))
    assert data.preprocessor.categorical == ["cat"]
    assert data.preprocessor.n_dense == 3 + 3  # rid, x1, x2 + one column per colour
    assert data.preprocessor.n_numeric == 3
    onehot = data.splits["train"].X[:, 3:]
    np.testing.assert_array_equal(onehot.sum(axis=1), 1.0)
    # One-hot columns leave no codes to embed.
    assert data.preprocessor.codes is None and data.preprocessor.cardinalities == []
    assert all(s.C.shape == (len(s), 0) and s.C.dtype == np.int64 for s in data.splits.values())


def test_categorical_features_can_be_embedded_as_codes(make_frame):
    df = make_frame(200)
    data = _prepare(df, FeaturesConfig(categorical="embedding"))
    pre = data.preprocessor
    assert pre.categorical == ["cat"]
    assert pre.n_dense == pre.n_numeric == 3  # no one-hot columns at all
    assert pre.cardinalities == [3 + 1]  # three colours and the reserved "unseen" code 0
    assert pre.embedding_dims == [3]  # round(1.6 * 3 ** 0.56)
    for split in data.splits.values():
        assert split.X.shape == (len(split), 3)
        assert split.C.shape == (len(split), 1) and split.C.dtype == np.int64
        assert set(np.unique(split.C)) == {1, 2, 3}  # every colour was seen in training
        levels = pre.codes.categories_[0][split.C[:, 0] - 1]
        assert list(levels) == list(split.rows["cat"])
    fixed = _prepare(df, FeaturesConfig(categorical="embedding", embedding_dim=5))
    assert fixed.preprocessor.embedding_dims == [5]


def test_quantile_scaling_is_fitted_on_train_only(make_frame):
    df = make_frame(300)
    data = _prepare(df, FeaturesConfig(numeric="quantile"))
    scaler = data.preprocessor.dense.named_transformers_["num"][-1]
    assert type(scaler).__name__ == "QuantileTransformer"
    train_ids = sorted(_ids(data.splits["train"]))
    assert scaler.n_quantiles_ == len(train_ids)
    assert scaler.quantiles_[:, 0].min() == min(train_ids)
    assert scaler.quantiles_[:, 0].max() == max(train_ids)
    x = data.splits["train"].X[:, :3]
    # Mapped to a normal shape on train: centred, and the skewed id column is symmetric too.
    assert np.abs(np.median(x, axis=0)).max() < 0.05
    assert np.abs(x).max() < 6


# --------------------------------------------------------------------------- with_features


def test_with_features_returns_itself_when_nothing_changes(make_frame):
    data = _prepare(make_frame(120))
    assert data.with_features(FeaturesConfig()) is data


def test_with_features_keeps_the_transforms_for_model_layer_settings(make_frame):
    data = _prepare(make_frame(120))
    settings = FeaturesConfig(numeric_embedding="periodic", n_frequencies=4)
    other = data.with_features(settings)
    assert other is not data
    assert other.preprocessor.settings == settings
    assert data.preprocessor.settings == FeaturesConfig()  # the original is untouched
    assert other.preprocessor.dense is data.preprocessor.dense
    assert other.splits is data.splits


@pytest.mark.parametrize(
    "settings",
    [FeaturesConfig(categorical="embedding"), FeaturesConfig(numeric="quantile")],
    ids=["embedding", "quantile"],
)
def test_with_features_refits_on_train_and_keeps_targets(make_frame, settings):
    df = make_frame(200)
    data = _prepare(df)
    other = data.with_features(settings)
    fresh = _prepare(df, settings)
    assert other.preprocessor.settings == settings
    assert (other.fingerprint, other.source, other.n_rows) == (
        data.fingerprint,
        data.source,
        data.n_rows,
    )
    assert other.tasks == data.tasks
    for name, split in other.splits.items():
        assert split.y is data.splits[name].y  # targets are not recomputed
        assert split.rows is data.splits[name].rows
        # The same as preparing under the new settings from the start.
        np.testing.assert_allclose(split.X, fresh.splits[name].X, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(split.C, fresh.splits[name].C)
    assert other.preprocessor.n_dense == fresh.preprocessor.n_dense


def test_only_keeps_one_task_and_the_representation(make_frame):
    data = _prepare(make_frame(120), FeaturesConfig(categorical="embedding"))
    sub = data.only("reg")
    assert [t.name for t in sub.tasks] == ["reg"]
    assert sub.out_dims == {"reg": 1}
    assert sub.preprocessor.settings == data.preprocessor.settings
    for name, split in sub.splits.items():
        assert list(split.y) == ["reg"]
        assert split.X is data.splits[name].X and split.C is data.splits[name].C


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_with_one_value_only(make_frame):
    df = make_frame(100)
    base = fingerprint(df)
    assert fingerprint(df.copy()) == base
    assert fingerprint(make_frame(100)) == base
    changed = df.copy()
    changed.loc[42, "x1"] += 1e-9
    assert fingerprint(changed) != base
    assert fingerprint(df.rename(columns={"x1": "x_one"})) != base
    assert len(base) == 16


def test_prepared_data_carries_the_fingerprint(tmp_path, make_frame, file_config):
    df = make_frame(80)
    path = _write_csv(tmp_path / "d.csv", df)
    assert prepare(file_config(path)).fingerprint == fingerprint(pd.read_csv(path))


# --------------------------------------------------------------------------- tasks


def test_tasks_encode_and_decode():
    spec = MulticlassTask("kind", "col", classes=["a", "b", "c"])
    y = spec.encode(pd.Series(["b", None, "c", "zzz"]))
    np.testing.assert_array_equal(y[[0, 2]], [1.0, 2.0])
    assert np.isnan(y[1]) and np.isnan(y[3])  # missing and unseen labels are masked
    out = spec.decode(np.array([[0.0, 3.0, 0.0], [5.0, 0.0, 0.0]]))
    assert list(out["kind"]) == ["b", "a"]
    np.testing.assert_allclose(out["kind_proba_a"] + out["kind_proba_b"] + out["kind_proba_c"], 1.0)

    reg = RegressionTask("mass", "g", mean=4000.0, std=800.0)
    enc = reg.encode(pd.Series([4800.0, np.nan]))
    assert enc[0] == pytest.approx(1.0) and np.isnan(enc[1])
    assert reg.decode(np.array([[1.0], [-0.5]]))["mass"].tolist() == [4800.0, 3600.0]

    binary = BinaryTask("sex", "sex", classes=["female", "male"])
    dec = binary.decode(np.array([[-2.0], [2.0]]))
    assert list(dec["sex"]) == ["female", "male"]
    assert dec["sex_proba"][1] == pytest.approx(1 / (1 + np.exp(-2.0)))


# --------------------------------------------------------------------------- wrong results


def test_a_repeated_column_name_is_refused_not_renamed(tmp_path, make_frame, file_config):
    # pandas reads a second 'yb' as 'yb.1', which then leaks the label as a feature.
    frame = make_frame(60)
    path = tmp_path / "dup.csv"
    frame.assign(copy=frame["yb"]).rename(columns={"copy": "yb"}).to_csv(path, index=False)
    assert list(pd.read_csv(path).columns)[-1] == "yb.1"
    with pytest.raises(DataError, match=r"column name\(s\) \['yb'\] appear more than once") as info:
        prepare(file_config(path))
    assert str(path) in str(info.value)


def test_a_repeated_column_name_is_refused_in_parquet_and_in_memory(tmp_path, make_frame):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array([1, 2]), pa.array([3, 4])], names=["y", "y"]), path)
    with pytest.raises(DataError, match=r"\['y'\] appear more than once"):
        read_table(path)
    frame = make_frame(60)
    frame.columns = ["rid", "x1", "x2", "cat", "yb", "ym", "x1"]
    with pytest.raises(DataError, match=r"mem: column name\(s\) \['x1'\]"):
        _prepare(frame)


def _with_strays(frame: pd.DataFrame, column: str, rows: int, value: str = "oops") -> pd.DataFrame:
    values = frame[column].astype(object)
    values.iloc[:rows] = value
    return frame.assign(**{column: values})


def test_numbers_with_a_few_stray_strings_are_refused(tmp_path, make_frame, file_config):
    path = _write_csv(tmp_path / "d.csv", _with_strays(make_frame(200), "x2", 3, "12,5 kg"))
    with pytest.raises(DataError) as info:
        prepare(file_config(path))
    msg = str(info.value)
    assert "'x2'" in msg and "'12,5 kg'" in msg and "3 of 200 values (1.5%)" in msg
    assert "data.coerce_numeric" in msg and "\n" not in msg


def test_listed_columns_are_coerced_or_kept_as_categories(tmp_path, make_frame, file_config):
    path = _write_csv(tmp_path / "d.csv", _with_strays(make_frame(200), "x2", 3))
    coerced = prepare(file_config(path, coerce_numeric=["x2"]))
    assert "x2" in coerced.preprocessor.numeric
    assert sum(s.rows["x2"].isna().sum() for s in coerced.splits.values()) == 3
    assert all(np.isfinite(s.X).all() for s in coerced.splits.values())
    kept = prepare(file_config(path, categorical=["x2"]))
    assert "x2" in kept.preprocessor.categorical
    with pytest.raises(DataError, match="'x1', which holds numbers"):
        prepare(file_config(path, categorical=["x1"]))


def test_a_mostly_text_column_stays_categorical(tmp_path, make_frame, file_config):
    # 'cat' with a few numeric-looking levels: under 90 % numbers, so categories.
    frame = make_frame(200)
    cat = frame["cat"].astype(object)
    cat.iloc[:15] = "7"
    path = _write_csv(tmp_path / "d.csv", frame.assign(cat=cat))
    data = prepare(file_config(path))
    assert "cat" in data.preprocessor.categorical


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e308, -3.5e38])
@pytest.mark.parametrize("column", ["x1", "yr"])
def test_non_finite_values_are_refused_naming_column_and_rows(
    tmp_path, make_frame, file_config, value, column
):
    frame = make_frame(200)
    frame.loc[[3, 7], column] = value
    path = _write_csv(tmp_path / "d.csv", frame)
    with pytest.raises(DataError) as info:
        prepare(file_config(path))
    msg = str(info.value)
    assert f"'{column}' (2 rows)" in msg and "data.non_finite: missing" in msg
    assert str(path) in msg and "\n" not in msg


def test_non_finite_values_can_be_read_as_missing(tmp_path, make_frame, file_config):
    frame = make_frame(200)
    frame.loc[[3, 7], "x1"] = np.inf
    frame.loc[[4], "yr"] = -1e308
    path = _write_csv(tmp_path / "d.csv", frame)
    data = prepare(file_config(path, non_finite="missing"))
    assert data.n_rows == 200  # the row with a bad label still trains the other tasks
    missing_labels = sum(int(np.isnan(s.y["reg"]).sum()) for s in data.splits.values())
    assert missing_labels == 1
    for split in data.splits.values():
        assert np.isfinite(split.X).all()
        assert not np.isinf(split.y["reg"]).any()
    assert data.preprocessor.non_finite == "missing"
    # Rows scored later follow the same rule.
    rows = data.splits["test"].rows.head(3).copy()
    rows.loc[rows.index[0], "x1"] = np.inf
    X, _ = data.preprocessor.transform(rows)
    assert np.isfinite(X).all()


def test_a_widely_spread_target_keeps_finite_metrics_and_predictions(make_frame):
    frame = make_frame(200)
    frame["yr"] = np.clip(frame["yr"], -3, 3) * 1e38  # within float32, barely
    data = _prepare(frame)
    reg = next(t for t in data.tasks if t.name == "reg")
    y = data.splits["test"].y["reg"]
    scores = (y * 0.5)[:, None]
    assert all(np.isfinite(v) for v in reg.metrics(y, scores).values())
    assert np.isfinite(reg.decode(scores * 2)["reg"]).all()


def test_an_overflow_inside_the_scaler_is_caught_and_named(make_frame):
    # A tiny spread in training turns an ordinary value at scoring time into 1e44.
    frame = make_frame(100)
    frame["x1"] = frame["x1"] * 1e-14
    data = _prepare(frame)
    rows = data.splits["test"].rows.head(4).copy()
    rows["x1"] = 1e30
    with pytest.raises(DataError) as info:
        data.preprocessor.transform(rows, "new.csv")
    msg = str(info.value)
    assert msg.startswith("new.csv: column 'x1' does not scale to finite numbers in 4 row(s)")


def test_a_non_finite_value_at_scoring_time_is_refused_by_default(make_frame):
    data = _prepare(make_frame(100))
    rows = data.splits["test"].rows.head(3).copy()
    rows.loc[rows.index[1], "x2"] = -np.inf
    with pytest.raises(DataError, match=r"rows.csv: column\(s\) 'x2' \(1 row\) hold inf"):
        data.preprocessor.transform(rows, "rows.csv")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"x1;x2;yb\n1;2;0\n3;4;1\n", "looks ';'-separated"),
        (b"x1\tx2\tyb\n1\t2\t0\n", "looks '\\t'-separated"),
        (b"rid,x1,x2,cat,yb,ym,yr\n", "no data rows (the file has a header only)"),
    ],
    ids=["semicolon", "tab", "header-only"],
)
def test_a_misread_file_is_named(tmp_path, file_config, content, expected):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        prepare(file_config(path))
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


def test_a_task_without_labels_is_refused(tmp_path, make_frame, file_config):
    path = _write_csv(tmp_path / "d.csv", make_frame(60).assign(yr=np.nan))
    with pytest.raises(DataError, match=r"target column 'yr' \(task 'reg'\) has no labels"):
        prepare(file_config(path))


def test_a_task_needs_labels_in_every_split(tmp_path, make_frame, file_config):
    frame = make_frame(200)
    frame.loc[3:, "yr"] = np.nan  # three labels: some split gets none
    path = _write_csv(tmp_path / "d.csv", frame)
    with pytest.raises(DataError, match=r"'yr' \(task 'reg'\) has 3 labelled row\(s\), and the"):
        prepare(file_config(path))
