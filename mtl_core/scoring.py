"""Batch scoring that streams: files larger than memory go through in chunks.

- :func:`input_files` turns a file, a folder or a glob into the files to read;
  :func:`check_input` compares their columns with the model's input schema before any row
  is scored;
- :func:`read_chunks` reads CSV with ``chunksize`` and Parquet by record batches, only the
  columns the model needs;
- :func:`score_stream` checks each chunk (:func:`conform`), scores it, and appends the
  predictions, with the row id and constant columns such as the model version, to an
  :class:`AtomicParquetWriter`, which writes under a temporary name in the target folder;
  the next chunk is read, and the last one written, while a chunk is being scored;
  :func:`move_into_place` renames the file only once the whole batch succeeded, so a failed
  or interrupted run never leaves a partial file under the final name.

Pure pandas and pyarrow: the model is any ``predict(frame) -> frame`` callable.
"""

from __future__ import annotations

import glob
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtl_core.drift import BatchSample
from mtl_core.errors import DataError

NUMERIC, STRING, OTHER = "numeric", "string", "other"
PRED = "pred:"  # prefix of prediction columns in the drift/score sample
QUANTILES = (1, 5, 25, 50, 75, 95, 99)
_END = object()  # the end of the chunks


@dataclass(frozen=True)
class InputSchema:
    """The model's input columns, each ``numeric``, ``string`` or ``other``."""

    columns: dict[str, str]

    @property
    def names(self) -> list[str]:
        """Input column names, in the model's order."""
        return list(self.columns)


# --------------------------------------------------------------------------- input


def _format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    return None


def input_files(spec: str | Path) -> list[Path]:
    """The files a scoring input names: one file, the CSV/Parquet files of a folder, or a glob.

    Raises:
        DataError: Nothing matches, or a named file is neither CSV nor Parquet.
    """
    text = str(spec)
    path = Path(text)
    if path.is_file():
        if _format(path) is None:
            raise DataError(f"{path}: expected a .csv or .parquet file, got '{path.suffix}'")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _format(p))
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in files if p.is_file() and _format(p)]
    else:
        raise DataError(f"{text}: input not found")
    if not files:
        raise DataError(f"{text}: no .csv or .parquet files found")
    return files


def _arrow_kind(kind: pa.DataType) -> str | None:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return NUMERIC
    if pa.types.is_boolean(kind):
        return NUMERIC
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return STRING
    if pa.types.is_dictionary(kind):
        return _arrow_kind(kind.value_type)
    if pa.types.is_null(kind):
        return None  # all missing: fits any kind
    return OTHER


def file_columns(path: Path) -> dict[str, str | None]:
    """A file's columns and their kinds (``None``: not known before reading, as in CSV).

    Raises:
        DataError: The file cannot be read.
    """
    try:
        if _format(path) == "parquet":
            schema = pq.read_schema(path)
            return {name: _arrow_kind(schema.field(name).type) for name in schema.names}
        return dict.fromkeys(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read data ({_first_line(exc)})") from None


def check_input(files: list[Path], schema: InputSchema, id_column: str | None = None) -> None:
    """Check every file's columns against the model's input schema, before reading any row.

    Raises:
        DataError: One line naming the file and the missing or mistyped columns.
    """
    for path in files:
        cols = file_columns(path)
        wanted = schema.names + ([id_column] if id_column else [])
        missing = [c for c in wanted if c not in cols]
        if missing:
            what = "the model's input and row-id" if id_column in missing else "the model's input"
            raise DataError(
                f"{path}: rows do not match {what} columns: missing {missing} "
                f"(the model expects {schema.names})"
            )
        text = [c for c, kind in schema.columns.items() if kind == NUMERIC and cols[c] == STRING]
        if text:
            raise DataError(
                f"{path}: rows do not match the model's input columns: {text} hold text, "
                "the model expects numbers"
            )


def read_chunks(
    files: list[Path], chunk_rows: int, schema: InputSchema, id_column: str | None = None
) -> Iterator[tuple[str, int, pd.DataFrame]]:
    """Yield ``(file, first data row number, chunk)`` with only the columns scoring needs.

    Raises:
        DataError: A file cannot be read or parsed.
    """
    columns = schema.names + ([id_column] if id_column and id_column not in schema.columns else [])
    # Categories are read as text, so a code such as 007 keeps its leading zeros.
    text = {c: "str" for c, kind in schema.columns.items() if kind == STRING}
    for path in files:
        first = 1
        try:
            if _format(path) == "parquet":
                # Without pre-buffering: with it, pyarrow reads ahead the column chunks of
                # every row group, and memory grows with the file (measured: 1.5 GiB to
                # iterate 4M rows against 0.4 GiB without; bench/scoring.py).
                parts = (
                    b.to_pandas()
                    for b in pq.ParquetFile(path, pre_buffer=False).iter_batches(
                        batch_size=chunk_rows, columns=columns
                    )
                )
            else:
                parts = pd.read_csv(path, chunksize=chunk_rows, usecols=columns, dtype=text)
            for chunk in parts:
                yield str(path), first, chunk
                first += len(chunk)
        except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as exc:
            raise DataError(f"{path}: cannot read data ({_first_line(exc)})") from None


def conform(chunk: pd.DataFrame, schema: InputSchema, source: str, first_row: int) -> pd.DataFrame:
    """The model's input columns of a chunk, with the dtypes its signature accepts.

    Numeric columns become float64 (the signature declares double, so that missing values
    are allowed); text in one of them is an error naming the row. Categorical columns
    become text.

    Raises:
        DataError: A numeric column holds a value that is not a number.
    """
    out = {}
    for col, kind in schema.columns.items():
        s = chunk[col]
        if kind == NUMERIC and not pd.api.types.is_float_dtype(s):
            if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
                s = s.astype("float64")
            else:
                num = pd.to_numeric(s, errors="coerce")
                bad = np.flatnonzero((num.isna() & s.notna()).to_numpy())
                if len(bad):
                    raise DataError(
                        f"{source}: column '{col}' must be numeric; data row "
                        f"{first_row + int(bad[0])} holds {s.iloc[bad[0]]!r}"
                    )
                s = num.astype("float64")
        elif kind == STRING and not (
            pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)
        ):
            if pd.api.types.is_float_dtype(s) and (s.dropna() % 1 == 0).all():
                s = s.astype("Int64")  # codes read as floats because of a gap: 7.0 is "7"
            s = s.astype(object).where(s.isna(), s.astype(str))
        out[col] = s
    return pd.DataFrame(out, index=chunk.index)


# --------------------------------------------------------------------------- output


class AtomicParquetWriter:
    """Appends frames to a Parquet file under a temporary name next to ``path``.

    The first frame fixes the schema. :meth:`close` finishes the temporary file;
    :func:`move_into_place` then renames it to ``path`` (``os.replace``: atomic within a
    file system). :meth:`discard` removes it.

    Args:
        path: The final file name.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.partial")
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        """Append a frame's rows."""
        table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        if self._writer is None:
            self._schema = table.schema.remove_metadata()  # pandas metadata of chunk 1 only
            table = table.replace_schema_metadata(None)
            self._writer = pq.ParquetWriter(self.temp, self._schema)
        self._writer.write_table(table)
        self.rows += len(frame)

    def close(self) -> Path:
        """Finish the temporary file; returns its path."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.temp

    def discard(self) -> None:
        """Close and remove the temporary file."""
        try:
            self.close()
        finally:
            self.temp.unlink(missing_ok=True)


def move_into_place(temp: Path, path: Path) -> Path:
    """Rename a finished temporary file to its final name, after syncing it to disk."""
    with open(temp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, path)
    return Path(path)


# --------------------------------------------------------------------------- scoring


@dataclass
class ScoreStats:
    """What one scoring pass saw.

    Attributes:
        rows: Rows scored.
        chunks: Chunks read.
        files: Files read.
        seconds: Wall time of reading, scoring and writing.
        classes: Per class-valued prediction column, rows per predicted class.
    """

    rows: int = 0
    chunks: int = 0
    files: int = 0
    seconds: float = 0.0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        """Throughput of the pass."""
        return self.rows / self.seconds if self.seconds > 0 else math.nan


def score_stream(
    chunks: Iterable[tuple[str, int, pd.DataFrame]],
    predict: Callable[[pd.DataFrame], pd.DataFrame],
    schema: InputSchema,
    writer: AtomicParquetWriter,
    *,
    id_column: str | None = None,
    constants: dict[str, str] | None = None,
    sample: BatchSample | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ScoreStats:
    """Score chunks one at a time and append the predictions to ``writer``.

    Each output row holds the row id (when ``id_column`` is given), the prediction columns,
    then ``constants`` (e.g. ``model_version``).

    Args:
        chunks: ``(source, first data row, frame)`` triples, as :func:`read_chunks` yields.
        predict: The model: input rows -> prediction frame with as many rows.
        schema: The model's input columns.
        writer: Where predictions go.
        id_column: Input column carried through to the predictions.
        constants: Columns with one value for every row.
        sample: Receives each chunk's model inputs plus its predictions (prefixed ``pred:``),
            for the drift check and the score distribution.
        on_chunk: Called after each chunk with (chunks done, rows done).

    Returns:
        Counts, time and predicted-class counts.

    Raises:
        DataError: A chunk does not fit the schema, or the model refused its rows.
    """
    stats, seen = ScoreStats(), set()
    t0 = time.perf_counter()
    items = iter(chunks)
    # Reading the next chunk and writing the last one overlap with scoring this one (Parquet
    # decoding and encoding release the GIL); one of each in flight keeps memory bounded.
    try:
        with (
            ThreadPoolExecutor(1, thread_name_prefix="mtl-read") as reads,
            ThreadPoolExecutor(1, thread_name_prefix="mtl-write") as writes,
        ):
            ahead = reads.submit(next, items, _END)
            written: Future | None = None
            while (item := ahead.result()) is not _END:
                source, first, raw = item
                ahead = reads.submit(next, items, _END)
                seen.add(source)
                inputs = conform(raw, schema, source, first)
                preds = predict(inputs).reset_index(drop=True)
                if len(preds) != len(inputs):
                    raise DataError(
                        f"{source}: the model returned {len(preds)} rows for {len(inputs)}"
                    )
                parts = [raw[[id_column]].reset_index(drop=True)] if id_column else []
                out = pd.concat([*parts, preds], axis=1)
                for key, value in (constants or {}).items():
                    out[key] = value
                if written is not None:
                    written.result()  # in order, and a failed write stops the run here
                written = writes.submit(writer.write, out)
                _count_classes(stats.classes, preds)
                if sample is not None:
                    inputs = inputs.reset_index(drop=True)
                    sample.add(pd.concat([inputs, preds.add_prefix(PRED)], axis=1))
                stats.rows += len(preds)
                stats.chunks += 1
                if on_chunk is not None:
                    on_chunk(stats.chunks, stats.rows)
            if written is not None:
                written.result()
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the reader thread is done: a generator may release its file now
    stats.files = len(seen)
    stats.seconds = time.perf_counter() - t0
    return stats


def _count_classes(classes: dict[str, dict[str, int]], preds: pd.DataFrame) -> None:
    """Add a chunk's predicted classes (every column that is not float) to the counts."""
    for col in preds.columns:
        if not pd.api.types.is_float_dtype(preds[col]):
            counts = classes.setdefault(col, {})
            for label, n in preds[col].astype(str).value_counts().items():
                counts[label] = counts.get(label, 0) + int(n)


def _key(label: str) -> str:
    # MLflow metric keys allow letters, digits, _ - . / and spaces.
    return re.sub(r"[^\w\-. /]", "_", label)


def score_distribution(stats: ScoreStats, sample: pd.DataFrame) -> dict[str, float]:
    """Metrics describing the predictions.

    Class columns get ``scores/{column}/share/{class}`` (exact, from every row); value and
    probability columns get ``scores/{column}/mean`` and ``.../p{q}`` quantiles, estimated
    from ``sample`` (a uniform sample with columns prefixed ``pred:``).
    """
    out: dict[str, float] = {}
    for col, counts in stats.classes.items():
        total = sum(counts.values())
        for label, n in sorted(counts.items()):
            out[f"scores/{_key(col)}/share/{_key(label)}"] = n / total if total else math.nan
    for col in (c for c in sample.columns if c.startswith(PRED)):
        name = col.removeprefix(PRED)
        if name in stats.classes or not pd.api.types.is_float_dtype(sample[col]):
            continue
        values = sample[col].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        out[f"scores/{_key(name)}/mean"] = float(values.mean())
        for q, v in zip(QUANTILES, np.percentile(values, QUANTILES), strict=True):
            out[f"scores/{_key(name)}/p{q:02d}"] = float(v)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
