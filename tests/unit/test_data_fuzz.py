"""Property: any small CSV and data config ends in a project error or in finite, consistent data.

Hypothesis writes tiny CSV files with random column kinds (numbers, integers,
categories, numbers with stray words, constants), missing values, ±inf, values
beyond float32, repeated column names and repeated categories, and pairs them
with random data configs (tasks, features, split fractions, the non-finite
policy, coerced and categorical columns, the representation). ``prepare`` must
then either raise an :class:`~mtl_core.errors.MTLError` (a one-line message) or
return splits whose matrices and targets are finite and whose shapes agree.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mtl_core.config import validate_config
from mtl_core.data import SPLITS, prepare
from mtl_core.errors import MTLError

SPECIAL = ["", "nan", "inf", "-inf", "1e308", "-1e308", "3.5e38", "1e-300", "1e30"]
WORDS = ["red", "green", "blue", "n/a", "?", "x"]
# Repeated entries weigh the draw towards columns that can be prepared.
KINDS = ["float", "int", "binary", "category", "float", "category", "strays", "constant"]
# The task type that suits a column of each kind; other pairings are tried too.
SUITS = {"float": "regression", "int": "regression", "binary": "binary", "category": "multiclass"}


@st.composite
def cells(draw, kind: str, dirty: bool) -> str:
    """One CSV cell of a column of ``kind``; a dirty column is sometimes missing or extreme."""
    # Hypothesis favours small integers, so the rare branch is the largest value.
    if kind == "empty" or (dirty and draw(st.integers(0, 7)) == 7):
        return "" if kind == "empty" else draw(st.sampled_from(SPECIAL))
    if kind == "float":
        return repr(draw(st.floats(-1e6, 1e6, allow_nan=False)))
    if kind == "int":
        return str(draw(st.integers(-3, 3)))
    if kind == "binary":
        return draw(st.sampled_from(["0", "1"]))
    if kind == "category":
        return draw(st.sampled_from(WORDS[:3]))
    if kind == "strays":
        return draw(st.sampled_from(WORDS)) if draw(st.integers(0, 19)) == 19 else "1.5"
    return "7"  # constant


@st.composite
def tables(draw) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Columns as (name, kind) and rows of cells; names sometimes repeat."""
    n_cols = draw(st.integers(2, 6))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=n_cols, max_size=n_cols))
    if draw(st.integers(0, 9)) == 9:  # a column with no value at all
        kinds[draw(st.integers(0, n_cols - 1))] = "empty"
    dirty = [draw(st.integers(0, 3)) == 3 for _ in range(n_cols)]
    names = [f"c{i}" for i in range(n_cols)]
    if draw(st.integers(0, 9)) == 9:  # a repeated name, e.g. the target twice
        names[-1] = draw(st.sampled_from(names[:-1]))
    n_rows = draw(st.integers(0, 12)) if draw(st.integers(0, 4)) == 4 else draw(st.integers(12, 40))
    rows = [
        [draw(cells(kind, d)) for kind, d in zip(kinds, dirty, strict=True)] for _ in range(n_rows)
    ]
    return list(zip(names, kinds, strict=True)), rows


@st.composite
def data_configs(draw, columns: list[tuple[str, str]]) -> dict:
    """A raw experiment config over (mostly) the table's columns."""
    names = [n for n, _ in columns]
    pick = (
        st.one_of(st.sampled_from(names), st.just("missing"))
        if draw(st.integers(0, 9)) == 9
        else st.sampled_from(names)
    )
    tasks = []
    targets = draw(st.lists(pick, min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 9:  # two tasks on one column
        targets = [targets[0], targets[0]]
    for i, column in enumerate(targets):
        kind = dict(columns).get(column, "float")
        suited = SUITS.get(kind)
        types = ["binary", "multiclass", "regression"]
        mismatch = not suited or draw(st.integers(0, 3)) == 3
        task_type = draw(st.sampled_from(types)) if mismatch else suited
        tasks.append({"name": f"t{i}", "column": column, "type": task_type})
    data = {
        "source": "file",
        "tasks": tasks,
        "val_fraction": draw(st.sampled_from([0.1, 0.2, 0.25, 0.3])),
        "test_fraction": draw(st.sampled_from([0.1, 0.2, 0.25])),
        "non_finite": draw(st.sampled_from(["error", "missing", "missing"])),
        "split_seed": draw(st.integers(0, 3)),
    }
    # Features, coerced and categorical columns: mostly among the other columns.
    others = [n for n in names if n not in targets] or names
    near = pick if draw(st.integers(0, 9)) == 9 else st.sampled_from(others)
    if draw(st.booleans()):
        data["features"] = draw(st.lists(near, min_size=1, max_size=3, unique=True))
    lists = draw(st.lists(near, max_size=3, unique=True))
    split = draw(st.integers(0, len(lists)))
    if lists and draw(st.booleans()):
        data["coerce_numeric"], data["categorical"] = lists[:split], lists[split:]
    features = {
        "numeric": draw(st.sampled_from(["standard", "quantile"])),
        "categorical": draw(st.sampled_from(["onehot", "embedding"])),
    }
    return {"data": data, "features": features}


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="mtl-fuzz-") as tmp:
        yield Path(tmp)


def _check_prepared(data) -> None:
    pre = data.preprocessor
    assert sum(len(s) for s in data.splits.values()) == data.n_rows
    for name in SPLITS:
        split = data.splits[name]
        n = len(split.rows)
        assert split.X.shape == (n, pre.n_dense) and split.X.dtype == np.float32
        assert split.C.shape == (n, len(pre.cardinalities)) and split.C.dtype == np.int64
        assert np.isfinite(split.X).all(), name
        for i, card in enumerate(pre.cardinalities):
            assert ((split.C[:, i] >= 0) & (split.C[:, i] < card)).all()
        for task in data.tasks:
            y = split.y[task.name]
            assert y.shape == (n,)
            labelled = ~np.isnan(y)
            assert labelled.any(), f"{task.name} has no label in {name}"
            assert np.isfinite(y[labelled]).all()
            if task.type != "regression":
                assert set(np.unique(y[labelled])) <= set(
                    range(task.out_dim if task.out_dim > 1 else 2)
                )


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(table=tables(), choice=st.data())
def test_prepare_ends_in_a_project_error_or_in_finite_data(folder, table, choice):
    columns, rows = table
    raw = choice.draw(data_configs(columns))
    path = folder / "data.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([name for name, _ in columns])
        writer.writerows(rows)
    raw["data"]["path"] = str(path)
    try:
        cfg = validate_config(raw, source="<fuzz>")
        data = prepare(cfg.data, cfg.features)
    except MTLError as exc:
        assert "\n" not in str(exc)
        event(str(exc).split(": ", 1)[-1][:40])
        return
    event("prepared")
    _check_prepared(data)
