"""Data: loading, validation, splitting and preprocessing.

Sources are a user's CSV or Parquet file, the MMoE synthetic generator, or the
Palmer penguins. Whatever the source, :func:`prepare` returns the same
:class:`PreparedData`: float32 feature matrices per split, per-task targets in
which a missing label is NaN (that row is masked out of that task only), the
fitted :class:`Preprocessor` that travels with the model, and a content
fingerprint of the dataset.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mtl_core.config import DataConfig, SyntheticConfig
from mtl_core.errors import DataError
from mtl_core.tasks import get_kind, sigmoid, softmax

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- sources


def make_synthetic(cfg: SyntheticConfig) -> pd.DataFrame:
    """Generate the synthetic tasks of the MMoE paper (Ma et al., KDD 2018, sec. 3.2).

    Orthonormal u_1..u_T are drawn in R^d; task 1 has w_1 = c*u_1 and task i > 1
    has w_i = c*(p*u_1 + sqrt(1-p^2)*u_i), so cos(w_1, w_i) = p (and p^2 between
    two later tasks). With x ~ N(0, I), each target is
    y_i = w_i.x + sum_j sin(a_j * w_i.x + b_j) + e_i, with e_i ~ N(0, noise_std^2).
    Following public reimplementations, a_j and b_j are drawn from N(0, 1);
    the paper leaves them open. Targets named in ``binarize`` are thresholded
    at their median, giving balanced binary tasks.

    Returns:
        A frame with features ``x0..x{d-1}`` and targets ``y0..y{T-1}``.
    """
    if cfg.n_tasks > cfg.dim:
        raise DataError(f"data.synthetic: n_tasks ({cfg.n_tasks}) must not exceed dim ({cfg.dim})")
    rng = np.random.default_rng(cfg.seed)
    q, _ = np.linalg.qr(rng.standard_normal((cfg.dim, cfg.n_tasks)))
    u = q.T  # (T, d), orthonormal rows
    p = cfg.correlation
    w = [cfg.scale * u[0]] + [
        cfg.scale * (p * u[0] + math.sqrt(1 - p * p) * u[i]) for i in range(1, cfg.n_tasks)
    ]
    a = rng.standard_normal(cfg.n_sin)
    b = rng.standard_normal(cfg.n_sin)
    x = rng.standard_normal((cfg.n_rows, cfg.dim))
    frame = pd.DataFrame(x, columns=[f"x{j}" for j in range(cfg.dim)])
    for i, wi in enumerate(w):
        z = x @ wi  # (N,)
        y = (
            z
            + np.sin(np.outer(z, a) + b).sum(axis=1)
            + cfg.noise_std * rng.standard_normal(cfg.n_rows)
        )
        name = f"y{i}"
        frame[name] = (y > np.median(y)).astype(np.int64) if name in cfg.binarize else y
    return frame


def load_penguins() -> pd.DataFrame:
    """The Palmer penguins (344 rows), shipped inside the ``palmerpenguins`` package."""
    import palmerpenguins

    return palmerpenguins.load_penguins()


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; any failure is a one-line DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt") or suffix == ".gz":
            frame = pd.read_csv(path)
        else:
            got = suffix or path.name
            raise DataError(f"{path}: expected a .csv or .parquet file, got '{got}'")
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read data ({first})") from None
    return frame


def load_frame(cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    """Load the raw rows of a data config; returns the frame and a source label."""
    if cfg.source == "synthetic":
        s = cfg.synthetic
        return make_synthetic(s), f"synthetic(p={s.correlation},d={s.dim},n={s.n_rows})"
    if cfg.source == "penguins":
        return load_penguins(), "palmerpenguins"
    return read_table(cfg.path), str(cfg.path)


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a frame: values, column names and dtypes (16 hex chars)."""
    h = hashlib.sha256()
    h.update("|".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- preprocessing


@dataclass
class TaskSpec:
    """A task as fitted on data: its classes, or its target scaling for regression."""

    name: str
    column: str
    type: str
    classes: list | None = None
    mean: float = 0.0
    std: float = 1.0

    @property
    def out_dim(self) -> int:
        """Number of model outputs for this task."""
        return get_kind(self.type).out_dim(len(self.classes or []))

    def encode(self, values: pd.Series) -> np.ndarray:
        """Raw target values -> float32 training targets; NaN marks a missing label."""
        if self.type == "regression":
            return ((values.to_numpy(dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array(
            [lookup.get(v, np.nan) if not pd.isna(v) else np.nan for v in values],
            dtype=np.float32,
        )

    def decode(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs (N, out_dim) -> named prediction columns in the target's units."""
        if self.type == "regression":
            return {self.name: scores[:, 0] * self.std + self.mean}
        classes = np.asarray(self.classes, dtype=object)
        if self.type == "binary":
            p1 = sigmoid(scores[:, 0].astype(np.float64))
            return {self.name: classes[(p1 >= 0.5).astype(int)], f"{self.name}_proba": p1}
        probs = softmax(scores.astype(np.float64))
        cols = {self.name: classes[probs.argmax(axis=1)]}
        cols.update({f"{self.name}_proba_{c}": probs[:, i] for i, c in enumerate(self.classes)})
        return cols

    def true_values(self, y: np.ndarray) -> np.ndarray:
        """Encoded targets back to metric units (original scale for regression)."""
        return y * self.std + self.mean if self.type == "regression" else y


@dataclass
class Preprocessor:
    """Feature transformer and task encodings, fitted on the training split only."""

    features: list[str]
    numeric: list[str]
    categorical: list[str]
    transformer: ColumnTransformer
    tasks: list[TaskSpec]

    def transform(self, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
        """Raw feature rows -> float32 matrix (N, n_inputs); checks the columns first."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: missing feature column(s) {missing}")
        cols = frame[self.features].copy()
        for c in self.categorical:
            cols[c] = _as_category(cols[c])
        for c in self.numeric:
            try:
                cols[c] = pd.to_numeric(cols[c])
            except (TypeError, ValueError):
                raise DataError(f"{source}: column '{c}' must be numeric") from None
        return np.asarray(self.transformer.transform(cols), dtype=np.float32)

    def predictions(self, outputs: dict[str, np.ndarray]) -> pd.DataFrame:
        """Model outputs per task -> one DataFrame with named columns per task."""
        cols: dict[str, np.ndarray] = {}
        for spec in self.tasks:
            cols.update(spec.decode(outputs[spec.name]))
        return pd.DataFrame(cols)

    @property
    def n_inputs(self) -> int:
        """Width of the transformed feature matrix."""
        return len(self.transformer.get_feature_names_out())


@dataclass
class Split:
    """One split: features (N, n_inputs) and per-task targets (N,), NaN = missing."""

    X: np.ndarray
    y: dict[str, np.ndarray]
    rows: pd.DataFrame = field(repr=False)  # the raw rows, for input examples and reports


@dataclass
class PreparedData:
    """Everything training and evaluation need, independent of any device."""

    preprocessor: Preprocessor
    splits: dict[str, Split]
    fingerprint: str
    source: str
    n_rows: int

    @property
    def tasks(self) -> list[TaskSpec]:
        """Fitted task specs, in config order."""
        return self.preprocessor.tasks

    @property
    def out_dims(self) -> dict[str, int]:
        """Output units per task, to build a model."""
        return {t.name: t.out_dim for t in self.tasks}

    def only(self, task: str) -> PreparedData:
        """A view holding one task, for single-task baselines."""
        spec = [t for t in self.tasks if t.name == task]
        pre = Preprocessor(**{**self.preprocessor.__dict__, "tasks": spec})
        splits = {k: Split(X=s.X, y={task: s.y[task]}, rows=s.rows) for k, s in self.splits.items()}
        return PreparedData(pre, splits, self.fingerprint, self.source, self.n_rows)


def _as_category(series: pd.Series) -> pd.Series:
    # Missing categories become their own level: missingness is often informative.
    return series.astype(object).where(series.notna(), "<missing>").astype(str)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _fit_task(frame: pd.DataFrame, name: str, column: str, type_: str, source: str) -> TaskSpec:
    values = frame[column]
    present = values.dropna()
    if type_ == "regression":
        if not _is_numeric(values):
            bad = present[pd.to_numeric(present, errors="coerce").isna()]
            example = f", e.g. {bad.iloc[0]!r}" if len(bad) else ""
            raise DataError(
                f"{source}: regression target column '{column}' (task '{name}') must be "
                f"numeric, got {values.dtype}{example}"
            )
        return TaskSpec(name, column, type_)
    classes = sorted(present.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(
            f"{source}: target column '{column}' (task '{name}') has {len(classes)} class(es) "
            f"{classes}; a {type_} task needs at least 2"
        )
    if type_ == "binary" and len(classes) > 2:
        raise DataError(
            f"{source}: binary target column '{column}' (task '{name}') has {len(classes)} "
            f"classes {classes[:5]}; use type 'multiclass'"
        )
    return TaskSpec(name, column, type_, classes=classes)


def _stratify_labels(frame: pd.DataFrame, tasks: list[TaskSpec]) -> pd.Series | None:
    for t in tasks:
        if t.type != "regression":
            labels = frame[t.column].astype(object).where(frame[t.column].notna(), "<missing>")
            if labels.astype(str).value_counts().min() >= 4:
                return labels.astype(str)
    return None


def _split(frame: pd.DataFrame, cfg: DataConfig, tasks: list[TaskSpec]) -> dict[str, pd.DataFrame]:
    strat = _stratify_labels(frame, tasks)
    holdout = cfg.val_fraction + cfg.test_fraction
    try:
        train, rest = train_test_split(
            frame, test_size=holdout, random_state=cfg.split_seed, stratify=strat
        )
        rest_strat = strat.loc[rest.index] if strat is not None else None
        val, test = train_test_split(
            rest,
            test_size=cfg.test_fraction / holdout,
            random_state=cfg.split_seed,
            stratify=rest_strat,
        )
    except ValueError:
        # Too few rows of some class to stratify: fall back to a plain seeded split.
        train, rest = train_test_split(frame, test_size=holdout, random_state=cfg.split_seed)
        val, test = train_test_split(
            rest, test_size=cfg.test_fraction / holdout, random_state=cfg.split_seed
        )
    return {"train": train, "val": val, "test": test}


def _build_transformer(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    parts = []
    if numeric:
        parts.append(
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric)
        )
    if categorical:
        parts.append(
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)
        )
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def prepare(cfg: DataConfig) -> PreparedData:
    """Load, validate, split and preprocess the data of an experiment.

    Rows whose labels are missing for every task are dropped; a label missing
    for some tasks only stays NaN and is masked out of those tasks' losses and
    metrics. Scalers, imputers, encoders and regression target scaling are
    fitted on the training split only.

    Raises:
        DataError: An unreadable file, a missing column, a single-class target, a
            non-numeric regression target, no rows left, or an all-missing feature.
    """
    frame, source = load_frame(cfg)
    return prepare_frame(frame, cfg, source)


def prepare_frame(frame: pd.DataFrame, cfg: DataConfig, source: str) -> PreparedData:
    """:func:`prepare` on a frame already in memory; ``source`` names it in errors."""
    targets = [t.column for t in cfg.tasks]
    shared = sorted({c for c in targets if targets.count(c) > 1})
    if shared:
        raise DataError(f"{source}: column(s) {shared} are the target of more than one task")
    wanted = targets + (cfg.features or [])
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found; available: {list(frame.columns)[:20]}"
        )
    features = cfg.features or [c for c in frame.columns if c not in targets]
    overlap = sorted(set(features) & set(targets))
    if overlap:
        raise DataError(f"{source}: column(s) {overlap} are both a feature and a target")
    if not features:
        raise DataError(f"{source}: no feature columns left besides the targets {targets}")
    digest = fingerprint(frame)

    kept = frame.loc[frame[targets].notna().any(axis=1), features + targets]
    if kept.empty:
        raise DataError(
            f"{source}: no rows left after dropping rows with no label in any of the target "
            f"column(s) {targets}"
        )
    if len(kept) < 10:
        raise DataError(f"{source}: only {len(kept)} usable rows; need at least 10 to split")
    empty = [c for c in features if kept[c].isna().all()]
    if empty:
        raise DataError(f"{source}: feature column(s) {empty} are entirely missing")
    tasks = [_fit_task(kept, t.name, t.column, t.type, source) for t in cfg.tasks]

    parts = _split(kept, cfg, tasks)
    numeric = [c for c in features if _is_numeric(kept[c])]
    categorical = [c for c in features if c not in numeric]
    for t in tasks:
        if t.type == "regression":
            y = parts["train"][t.column].astype(float)
            t.mean = float(y.mean()) if y.notna().any() else 0.0
            std = float(y.std()) if y.notna().sum() > 1 else 1.0
            t.std = std if std > 0 else 1.0
    pre = Preprocessor(
        features, numeric, categorical, _build_transformer(numeric, categorical), tasks
    )
    train_cols = parts["train"][features].copy()
    for c in categorical:
        train_cols[c] = _as_category(train_cols[c])
    pre.transformer.fit(train_cols)
    splits = {
        name: Split(
            X=pre.transform(rows, source),
            y={t.name: t.encode(rows[t.column]) for t in tasks},
            rows=rows[features].reset_index(drop=True),
        )
        for name, rows in parts.items()
    }
    return PreparedData(pre, splits, digest, source, n_rows=len(kept))
