"""Streaming batch scoring: input discovery, schema checks, chunked reading, atomic output."""

import numpy as np
import pandas as pd
import pytest

from mtl_core.drift import BatchSample
from mtl_core.errors import DataError
from mtl_core.scoring import (
    PRED,
    AtomicParquetWriter,
    InputSchema,
    check_input,
    conform,
    input_files,
    move_into_place,
    read_chunks,
    score_distribution,
    score_stream,
)

SCHEMA = InputSchema({"a": "numeric", "b": "numeric", "c": "string"})


def frame(n: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {
            "rid": np.arange(start, start + n),
            "a": rng.normal(size=n),
            "b": rng.integers(0, 5, size=n),
            "c": rng.choice(["007", "x", "y"], size=n),
            "unused": 1,
        }
    )


def fake_model(rows: pd.DataFrame) -> pd.DataFrame:
    """Deterministic stand-in: a value, a class and its probability."""
    assert rows["a"].dtype == np.float64 and rows["b"].dtype == np.float64
    p = 1 / (1 + np.exp(-rows["a"].to_numpy()))
    return pd.DataFrame(
        {"v": rows["a"] + rows["b"], "k": np.where(p >= 0.5, "hi", "lo").astype(object), "k_p": p}
    )


def test_input_files_from_a_file_a_folder_or_a_glob(tmp_path):
    frame(5).to_csv(tmp_path / "b.csv", index=False)
    frame(5).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "notes.txt.md").write_text("not data")
    assert input_files(tmp_path / "b.csv") == [tmp_path / "b.csv"]
    assert input_files(tmp_path) == [tmp_path / "a.parquet", tmp_path / "b.csv"]
    assert input_files(str(tmp_path / "*.parquet")) == [tmp_path / "a.parquet"]
    with pytest.raises(DataError, match="no .csv or .parquet files"):
        input_files(str(tmp_path / "*.json"))
    with pytest.raises(DataError, match="input not found"):
        input_files(tmp_path / "nope")


def test_check_input_names_the_file_and_the_columns(tmp_path):
    frame(5).drop(columns=["b"]).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(DataError, match=r"short.parquet: .* missing \['b'\]"):
        check_input([tmp_path / "short.parquet"], SCHEMA)
    frame(5).to_csv(tmp_path / "ok.csv", index=False)
    check_input([tmp_path / "ok.csv"], SCHEMA, id_column="rid")
    with pytest.raises(DataError, match=r"row-id columns: missing \['key'\]"):
        check_input([tmp_path / "ok.csv"], SCHEMA, id_column="key")
    text = frame(5).assign(a="text")
    text.to_parquet(tmp_path / "text.parquet")
    with pytest.raises(DataError, match=r"\['a'\] hold text"):
        check_input([tmp_path / "text.parquet"], SCHEMA)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_read_chunks_streams_only_the_needed_columns(tmp_path, fmt):
    path = tmp_path / f"rows.{fmt}"
    data = frame(250)
    if fmt == "csv":
        data.to_csv(path, index=False)
    else:
        data.to_parquet(path, row_group_size=100)
    chunks = list(read_chunks([path, path], 100, SCHEMA, id_column="rid"))
    assert [len(c) for _, _, c in chunks] == [100, 100, 50] * 2
    assert [first for _, first, _ in chunks] == [1, 101, 201] * 2
    assert set(chunks[0][2].columns) == {"a", "b", "c", "rid"}
    assert "007" in set(chunks[0][2]["c"])  # categories stay text, leading zeros kept


def test_conform_casts_and_names_the_bad_row():
    raw = pd.DataFrame({"a": ["1.5", None, "2"], "b": [1, 2, 3], "c": [1, 2, None]})
    out = conform(raw, SCHEMA, "f.csv", first_row=11)
    assert out["a"].dtype == np.float64 and out["b"].dtype == np.float64
    assert list(out["c"][:2]) == ["1", "2"] and pd.isna(out["c"][2])
    bad = raw.assign(a=["1.5", "oops", "2"])
    with pytest.raises(
        DataError, match=r"f.csv: column 'a' must be numeric; data row 12 holds 'oops'"
    ):
        conform(bad, SCHEMA, "f.csv", first_row=11)


def test_stream_writes_ids_predictions_and_version_like_one_call(tmp_path):
    data = frame(1000)
    data.to_parquet(tmp_path / "in.parquet", row_group_size=128)
    writer = AtomicParquetWriter(tmp_path / "out" / "preds.parquet")
    sample = BatchSample(300)
    seen = []
    stats = score_stream(
        read_chunks([tmp_path / "in.parquet"], 128, SCHEMA, "rid"),
        fake_model,
        SCHEMA,
        writer,
        id_column="rid",
        constants={"model_version": "7"},
        sample=sample,
        on_chunk=lambda chunks, rows: seen.append((chunks, rows)),
    )
    assert not (tmp_path / "out" / "preds.parquet").exists()  # not before it is moved
    temp = writer.close()
    final = move_into_place(temp, tmp_path / "out" / "preds.parquet")
    assert not temp.exists()
    out = pd.read_parquet(final)
    whole = fake_model(conform(data, SCHEMA, "x", 1))
    assert list(out.columns) == ["rid", "v", "k", "k_p", "model_version"]
    assert out["rid"].tolist() == list(range(1000))
    np.testing.assert_allclose(out["v"], whole["v"])
    assert (out["k"] == whole["k"]).all() and set(out["model_version"]) == {"7"}
    assert stats.rows == 1000 and stats.chunks == 8 and stats.files == 1
    assert seen[-1] == (8, 1000)
    assert sum(stats.classes["k"].values()) == 1000

    metrics = score_distribution(stats, sample.frame())
    assert metrics["scores/k/share/hi"] == pytest.approx((whole["k"] == "hi").mean())
    assert metrics["scores/k/share/hi"] + metrics["scores/k/share/lo"] == pytest.approx(1)
    assert metrics["scores/v/p50"] == pytest.approx(whole["v"].median(), abs=0.3)
    assert 0 < metrics["scores/k_p/p05"] < metrics["scores/k_p/p95"] < 1
    assert {c for c in sample.frame().columns if c.startswith(PRED)} == {
        "pred:v",
        "pred:k",
        "pred:k_p",
    }


def test_a_failure_mid_stream_leaves_nothing(tmp_path):
    final = tmp_path / "preds.parquet"
    final.write_bytes(b"yesterday's predictions")
    writer = AtomicParquetWriter(final)

    def dies_on_chunk_3(chunks: int, rows: int) -> None:
        if chunks == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        try:
            score_stream(
                read_chunks_of(frame(500), 100),
                fake_model,
                SCHEMA,
                writer,
                on_chunk=dies_on_chunk_3,
            )
        finally:
            writer.discard()
    assert final.read_bytes() == b"yesterday's predictions"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.parquet"]


def read_chunks_of(data: pd.DataFrame, size: int):
    for start in range(0, len(data), size):
        yield "mem", start + 1, data.iloc[start : start + size]
