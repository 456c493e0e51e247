"""The scikit-learn side of the input representation, fitted on the training split only.

A :class:`Preprocessor` turns raw feature rows into the two matrices a model reads:

- ``x`` (N, n_dense) float32: numeric columns, imputed (median) and either
  standardised or quantile-transformed to a normal shape (``features.numeric``),
  followed by one-hot columns when ``features.categorical`` is ``onehot``;
- ``c`` (N, n_categorical) int64: one code per categorical column when
  ``features.categorical`` is ``embedding``. Code 0 is reserved for a category
  never seen in training, so new categories at predict time still score.

It also carries the fitted tasks, which turn model outputs back into named
prediction columns. It is saved without pickle: its settings and tasks as JSON,
the scikit-learn transformers with ``skops.io``, which loads only types it trusts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    OneHotEncoder,
    OrdinalEncoder,
    QuantileTransformer,
    StandardScaler,
)

from mtl_core.config import FeaturesConfig
from mtl_core.errors import DataError
from mtl_core.inputs import embedding_dim, memory_budget_bytes
from mtl_core.tasks import Task, task_from_dict

MISSING = "<missing>"
JSON_FILE = "preprocessor.json"
SKOPS_FILE = "transformers.skops"
# The model computes in float32: a larger magnitude is as unusable as inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def non_finite_rows(values: pd.Series) -> np.ndarray:
    """Rows of a numeric column holding inf, -inf or a magnitude beyond float32 (≈3.4e38)."""
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return np.abs(x) > FLOAT32_MAX


def non_finite_message(source: str, counts: dict[str, int]) -> str:
    """One line naming the columns and how many rows each holds a non-finite value in."""
    shown = list(counts.items())[:5]
    named = ", ".join(f"'{c}' ({n} row{'s' if n != 1 else ''})" for c, n in shown)
    more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
    return (
        f"{source}: column(s) {named}{more} hold inf, -inf or values beyond ±3.4e38 "
        "(float32's range)"
    )


def as_category(series: pd.Series) -> pd.Series:
    """Categorical values as strings; missing values become their own level.

    Missingness is often informative, so it is kept as the level ``<missing>``.
    """
    return series.astype(object).where(series.notna(), MISSING).astype(str)


def _scaler(kind: str, n_rows: int):
    if kind == "quantile":
        return QuantileTransformer(
            output_distribution="normal", n_quantiles=max(2, min(1000, n_rows)), random_state=0
        )
    return StandardScaler()


@dataclass
class Preprocessor:
    """Feature transforms and fitted tasks; see the module docstring.

    Attributes:
        features: Raw feature columns, in order.
        numeric: The numeric ones among them.
        categorical: The categorical ones.
        settings: The ``features`` config section it was fitted with.
        dense: Transformer producing ``x`` (None when there is no dense column).
        codes: Encoder producing ``c`` (None unless categorical columns are embedded).
        tasks: The fitted tasks, in config order.
        non_finite: What :meth:`transform` does with inf, -inf and values beyond
            float32 in a numeric column: ``error`` refuses them, ``missing`` imputes them.
    """

    features: list[str]
    numeric: list[str]
    categorical: list[str]
    settings: FeaturesConfig
    dense: ColumnTransformer | None
    codes: OrdinalEncoder | None
    tasks: list[Task]
    non_finite: str = "error"

    @classmethod
    def fit(
        cls,
        rows: pd.DataFrame,
        numeric: list[str],
        categorical: list[str],
        settings: FeaturesConfig,
        tasks: list[Task],
        n_rows: int | None = None,
        non_finite: str = "error",
    ) -> Preprocessor:
        """Fit on the training rows.

        Args:
            rows: Raw training rows holding the feature columns.
            numeric: Numeric feature columns.
            categorical: Categorical feature columns.
            settings: How to represent them.
            tasks: Fitted tasks, carried along for predictions.
            n_rows: Rows the whole dataset has, to check that one-hot columns fit in memory.
            non_finite: ``error`` or ``missing``, for rows scored later (see the attribute).

        Raises:
            DataError: One-hot columns would not fit in memory.
        """
        features = [*numeric, *categorical]
        cats = pd.DataFrame({c: as_category(rows[c]) for c in categorical}, index=rows.index)
        embed = settings.categorical == "embedding"
        if categorical and not embed:
            _check_onehot_memory(cats, n_rows or len(rows))
        parts = []
        if numeric:
            scaler = _scaler(settings.numeric, len(rows))
            # A column with no value in the training split (a coerced column whose few numbers
            # all fell in other splits) stays, as zeros: dropping it would shift the columns.
            imputer = SimpleImputer(strategy="median", keep_empty_features=True)
            parts.append(("num", make_pipeline(imputer, scaler), numeric))
        if categorical and not embed:
            parts.append(
                ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)
            )
        dense = ColumnTransformer(parts, verbose_feature_names_out=False) if parts else None
        codes = None
        if categorical and embed:
            codes = OrdinalEncoder(
                handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.int64
            )
            codes.fit(cats)
        pre = cls(features, numeric, categorical, settings, dense, codes, tasks, non_finite)
        if dense is not None:
            dense.fit(pre._frame(rows))
        return pre

    def _frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        out = rows[self.features].copy()
        for c in self.categorical:
            out[c] = as_category(out[c])
        return out

    def transform(
        self, frame: pd.DataFrame, source: str = "input"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows -> ``x`` (N, n_dense) float32 and ``c`` (N, n_categorical) int64.

        Both matrices are finite: a numeric value that is not (see ``non_finite``), or
        one that the scaler turns into inf or NaN, is refused naming its column.

        Raises:
            DataError: A feature column is missing, a numeric one holds text or a
                non-finite value, or a value does not scale to a finite number.
        """
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: missing feature column(s) {missing}")
        cols = self._frame(frame)
        bad = {}
        for c in self.numeric:
            try:
                cols[c] = pd.to_numeric(cols[c])
            except (TypeError, ValueError):
                raise DataError(f"{source}: column '{c}' must be numeric") from None
            rows = non_finite_rows(cols[c])
            if rows.any():
                bad[c] = rows
                cols[c] = cols[c].astype(float).mask(rows)
        if bad and self.non_finite != "missing":
            raise DataError(non_finite_message(source, {c: int(r.sum()) for c, r in bad.items()}))
        n = len(cols)
        with np.errstate(over="ignore", invalid="ignore"):
            x = (
                np.asarray(self.dense.transform(cols), dtype=np.float32)
                if self.dense is not None
                else np.zeros((n, 0), dtype=np.float32)
            )
        finite = np.isfinite(x)
        if not finite.all():
            column = int(np.flatnonzero(~finite.all(axis=0))[0])
            name = self.dense.get_feature_names_out()[column]
            raise DataError(
                f"{source}: column '{name}' does not scale to finite numbers in "
                f"{int((~finite[:, column]).sum())} row(s) (features.numeric="
                f"{self.settings.numeric}); its values are too large or too far apart"
            )
        if self.codes is not None:
            c = self.codes.transform(cols[self.categorical]).astype(np.int64) + 1  # 0 = unseen
        else:
            c = np.zeros((n, 0), dtype=np.int64)
        return x, c

    def predictions(self, outputs: dict[str, np.ndarray]) -> pd.DataFrame:
        """Model outputs per task -> one DataFrame with named columns per task."""
        cols: dict[str, np.ndarray] = {}
        for task in self.tasks:
            cols.update(task.decode(outputs[task.name]))
        return pd.DataFrame(cols)

    @property
    def n_numeric(self) -> int:
        """Leading columns of ``x`` that are numeric."""
        return len(self.numeric)

    @property
    def n_dense(self) -> int:
        """Width of ``x``."""
        return 0 if self.dense is None else len(self.dense.get_feature_names_out())

    @property
    def cardinalities(self) -> list[int]:
        """Codes per embedded categorical column, the reserved index 0 included."""
        if self.codes is None:
            return []
        return [len(levels) + 1 for levels in self.codes.categories_]

    @property
    def embedding_dims(self) -> list[int]:
        """Embedding width per embedded categorical column."""
        return [embedding_dim(n - 1, self.settings.embedding_dim) for n in self.cardinalities]

    def with_tasks(self, tasks: list[Task]) -> Preprocessor:
        """The same transforms, carrying other tasks (single-task baselines)."""
        return Preprocessor(
            self.features,
            self.numeric,
            self.categorical,
            self.settings,
            self.dense,
            self.codes,
            tasks,
            self.non_finite,
        )

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        """Write ``preprocessor.json`` and ``transformers.skops`` into ``folder``."""
        import skops.io as sio

        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "features": self.features,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "settings": self.settings.model_dump(mode="json"),
            "tasks": [t.to_dict() for t in self.tasks],
            "non_finite": self.non_finite,
        }
        (folder / JSON_FILE).write_text(json.dumps(meta, indent=1))
        sio.dump({"dense": self.dense, "codes": self.codes}, folder / SKOPS_FILE)

    @classmethod
    def load(cls, folder: Path) -> Preprocessor:
        """Read what :meth:`save` wrote; refuses any type outside scikit-learn and numpy.

        Raises:
            DataError: The transformer file holds a type that is not trusted.
        """
        import skops.io as sio

        meta = json.loads((folder / JSON_FILE).read_text())
        path = folder / SKOPS_FILE
        untrusted = [t for t in sio.get_untrusted_types(file=path) if not _trusted(t)]
        if untrusted:
            raise DataError(f"{path}: refusing to load untrusted type(s) {untrusted}")
        parts = sio.load(path, trusted=sio.get_untrusted_types(file=path))
        return cls(
            meta["features"],
            meta["numeric"],
            meta["categorical"],
            FeaturesConfig.model_validate(meta["settings"]),
            parts["dense"],
            parts["codes"],
            [task_from_dict(t) for t in meta["tasks"]],
            meta.get("non_finite", "error"),  # saved before the setting existed
        )


def _trusted(type_name: str) -> bool:
    """Types a saved preprocessor may contain: scikit-learn's and numpy's own."""
    return type_name.startswith(("sklearn.", "numpy.")) or type_name in {"builtins.slice"}


def _check_onehot_memory(cats: pd.DataFrame, n_rows: int) -> None:
    widths = cats.nunique()
    need = n_rows * int(widths.sum() + len(widths)) * 4 * 2  # float32, host and device copies
    budget = memory_budget_bytes()
    if need > budget:
        widest = str(widths.idxmax())
        raise DataError(
            f"features.categorical=onehot: column '{widest}' has {int(widths.max()):,} levels, "
            f"and one-hot columns for {n_rows:,} rows need {need / 2**30:.1f} GiB, over the "
            f"{budget / 2**30:.1f} GiB allowed; set features.categorical=embedding"
        )
