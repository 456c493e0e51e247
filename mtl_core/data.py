"""Data: loading, validation, splitting and preprocessing.

Sources are a user's CSV or Parquet file, the MMoE synthetic generator, or the
Palmer penguins. Whatever the source, :func:`prepare` returns the same
:class:`PreparedData`: per split, the model's input matrices (see
:mod:`mtl_core.preprocess`) and per-task targets in which a missing label is NaN
(that row is masked out of that task only); the fitted
:class:`~mtl_core.preprocess.Preprocessor` that travels with the model; and a
content fingerprint of the dataset.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from mtl_core.config import DataConfig, FeaturesConfig, SyntheticConfig, duplicates, short_repr
from mtl_core.errors import DataError
from mtl_core.preprocess import Preprocessor, non_finite_message, non_finite_rows
from mtl_core.tasks import TASK_TYPES, Task

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


def _header(path: Path, suffix: str) -> list[str]:
    """Column names as the file spells them; pandas renames a repeated CSV name to ``name.1``."""
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    row = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    return [str(v) for v in row.iloc[0]]


def _check_unique_columns(names: list, source: str) -> None:
    dupes = duplicates(names)
    if dupes:
        raise DataError(
            f"{source}: column name(s) {dupes} appear more than once; each column needs its "
            "own name (a repeated target would otherwise become a feature)"
        )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; any failure is a one-line DataError naming the file.

    Refused as well: a repeated column name, a file with a header but no rows,
    and a CSV that holds one column whose name suggests another separator.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".txt", ".gz"):
        got = suffix or path.name
        raise DataError(f"{path}: expected a .csv or .parquet file, got '{got}'")
    try:
        _check_unique_columns(_header(path, suffix), str(path))
        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read data ({first})") from None
    if len(frame.columns) == 1 and suffix != ".parquet":
        name = str(frame.columns[0])
        sep = next((c for c in (";", "\t", "|") if c in name), None)
        if sep is not None:
            raise DataError(
                f"{path}: read one column {short_repr(name)}; the file looks "
                f"{sep!r}-separated, but a CSV file must be comma-separated"
            )
    if frame.empty:
        raise DataError(f"{path}: no data rows (the file has a header only)")
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


# --------------------------------------------------------------------------- prepared data


@dataclass
class Split:
    """One split: model inputs, per-task targets (N,) with NaN = missing, and the raw rows.

    Attributes:
        X: Dense inputs (N, n_dense) float32: numeric columns, then one-hot columns.
        C: Category codes (N, n_categorical) int64 for embedded categorical columns.
        y: Encoded targets per task.
        rows: The raw feature rows, for input examples, reports and refitting.
    """

    X: np.ndarray
    C: np.ndarray
    y: dict[str, np.ndarray]
    rows: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.X)


@dataclass
class PreparedData:
    """Everything training and evaluation need, independent of any device."""

    preprocessor: Preprocessor
    splits: dict[str, Split]
    fingerprint: str
    source: str
    n_rows: int

    @property
    def tasks(self) -> list[Task]:
        """Fitted tasks, in config order."""
        return self.preprocessor.tasks

    @property
    def out_dims(self) -> dict[str, int]:
        """Output units per task, to build a model."""
        return {t.name: t.out_dim for t in self.tasks}

    def only(self, task: str) -> PreparedData:
        """A view holding one task, for single-task baselines."""
        keep = [t for t in self.tasks if t.name == task]
        splits = {
            k: Split(X=s.X, C=s.C, y={task: s.y[task]}, rows=s.rows) for k, s in self.splits.items()
        }
        return PreparedData(
            self.preprocessor.with_tasks(keep), splits, self.fingerprint, self.source, self.n_rows
        )

    def with_features(self, settings: FeaturesConfig) -> PreparedData:
        """The same rows, splits and targets under another input representation.

        The feature transforms are refitted on the training split's raw rows; the
        targets are untouched. Returns ``self`` when nothing changes.
        """
        pre = self.preprocessor
        if settings.preprocessing_key() == pre.settings.preprocessing_key():
            if settings == pre.settings:
                return self
            return replace(self, preprocessor=replace(pre, settings=settings))
        refit = Preprocessor.fit(
            self.splits["train"].rows,
            pre.numeric,
            pre.categorical,
            settings,
            pre.tasks,
            self.n_rows,
            pre.non_finite,
        )
        splits = {}
        for name, s in self.splits.items():
            X, C = refit.transform(s.rows, self.source)
            splits[name] = Split(X=X, C=C, y=s.y, rows=s.rows)
        return PreparedData(refit, splits, self.fingerprint, self.source, self.n_rows)

    def cv_folds(self, k: int, seed: int = 0) -> list[PreparedData]:
        """The training split cut into ``k`` folds: fold j trains on the others, validates on j.

        The folds are stratified on the first classification task with at least
        ``k`` rows per class (missing labels as their own stratum), like the
        split itself, else plain seeded ``KFold``. The validation and test splits
        are not used: each fold holds only ``train`` and ``val``, so nothing can
        read the test rows through it.

        The feature transforms are refitted on each fold's training rows (the
        same :meth:`Preprocessor.fit` path as :meth:`with_features`), so no
        statistic of a fold's held-out rows reaches its training inputs; piecewise
        linear bins, computed from the training split when a model is built, follow.
        The targets keep the encoding fitted on the whole training split: class
        lists come from every labelled row anyway, and a regression target's
        standardisation is one affine map, the same for every trial on a fold. It
        carries no row-level information about the held-out rows; it scales that
        fold's objective by std_train² / std_fold² (near 1), equally for every
        trial, so it cannot reorder trials on a fold.

        Raises:
            ValueError: ``k`` is below 2 or above the number of training rows.
        """
        from sklearn.model_selection import KFold, StratifiedKFold

        train = self.splits["train"]
        if not 2 <= k <= len(train):
            raise ValueError(f"search.cv_folds={k}: need 2 <= k <= {len(train)} training rows")
        strata = None
        for t in self.tasks:
            labels = t.stratify_labels(pd.Series(train.y[t.name]))
            if labels is not None and labels.value_counts().min() >= k:
                strata = labels.to_numpy()
                break
        if strata is not None:
            cut = StratifiedKFold(k, shuffle=True, random_state=seed).split(train.X, strata)
        else:
            cut = KFold(k, shuffle=True, random_state=seed).split(train.X)
        pre = self.preprocessor
        folds = []
        for fit_rows, held_out in cut:
            parts = {"train": fit_rows, "val": held_out}
            rows = {n: train.rows.iloc[i].reset_index(drop=True) for n, i in parts.items()}
            refit = Preprocessor.fit(
                rows["train"], pre.numeric, pre.categorical, pre.settings, pre.tasks, self.n_rows
            )
            splits = {}
            for name, idx in parts.items():
                X, C = refit.transform(rows[name], self.source)
                y = {t: v[idx] for t, v in train.y.items()}
                splits[name] = Split(X=X, C=C, y=y, rows=rows[name])
            folds.append(PreparedData(refit, splits, self.fingerprint, self.source, self.n_rows))
        return folds


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _stratify_labels(frame: pd.DataFrame, tasks: list[Task]) -> pd.Series | None:
    """Labels of the first task that can stratify and has at least 4 rows per label."""
    for t in tasks:
        labels = t.stratify_labels(frame[t.column])
        if labels is not None and labels.value_counts().min() >= 4:
            return labels
    return None


def _split(frame: pd.DataFrame, cfg: DataConfig, tasks: list[Task]) -> dict[str, pd.DataFrame]:
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


def prepare(cfg: DataConfig, features: FeaturesConfig | None = None) -> PreparedData:
    """Load, validate, split and preprocess the data of an experiment.

    Rows whose labels are missing for every task are dropped; a label missing
    for some tasks only stays NaN and is masked out of those tasks' losses and
    metrics. Feature transforms and regression target scaling are fitted on the
    training split only.

    Args:
        cfg: Where the rows come from, the tasks, and the split.
        features: How to represent the feature columns; default ``FeaturesConfig()``.

    Raises:
        DataError: An unreadable file, a missing column, a single-class target, a
            non-numeric regression target, no rows left, or an all-missing feature.
    """
    frame, source = load_frame(cfg)
    return prepare_frame(frame, cfg, source, features)


def prepare_frame(
    frame: pd.DataFrame, cfg: DataConfig, source: str, features: FeaturesConfig | None = None
) -> PreparedData:
    """:func:`prepare` on a frame already in memory; ``source`` names it in errors."""
    settings = features or FeaturesConfig()
    _check_unique_columns(list(frame.columns), source)
    targets = [t.column for t in cfg.tasks]
    shared = sorted({c for c in targets if targets.count(c) > 1})
    if shared:
        raise DataError(f"{source}: column(s) {shared} are the target of more than one task")
    ids = [cfg.id_column] if cfg.id_column else []
    wanted = targets + (cfg.features or []) + cfg.coerce_numeric + cfg.categorical + ids
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found; available: {list(frame.columns)[:20]}"
        )
    # The row id is never a feature: it identifies rows, it does not describe them.
    feature_cols = cfg.features or [c for c in frame.columns if c not in targets + ids]
    overlap = sorted(set(feature_cols) & set(targets))
    if overlap:
        raise DataError(f"{source}: column(s) {overlap} are both a feature and a target")
    if not feature_cols:
        raise DataError(f"{source}: no feature columns left besides the targets {targets}")
    digest = fingerprint(frame)

    frame = _read_numbers(frame[feature_cols + targets], cfg, feature_cols, source)
    kept = frame.loc[frame[targets].notna().any(axis=1)]
    if kept.empty:
        raise DataError(
            f"{source}: no rows left after dropping rows with no label in any of the target "
            f"column(s) {targets}"
        )
    if len(kept) < 10:
        raise DataError(f"{source}: only {len(kept)} usable rows; need at least 10 to split")
    empty = [c for c in feature_cols if kept[c].isna().all()]
    if empty:
        raise DataError(f"{source}: feature column(s) {empty} are entirely missing")
    for t in cfg.tasks:
        if kept[t.column].isna().all():
            raise DataError(
                f"{source}: target column '{t.column}' (task '{t.name}') has no labels; "
                "every value is missing"
            )
    tasks = [
        TASK_TYPES.lookup(t.type).from_column(t.name, t.column, kept[t.column], source)
        for t in cfg.tasks
    ]

    parts = _split(kept, cfg, tasks)
    _check_labels_in_every_split(parts, tasks, source)
    for t in tasks:
        t.fit_train(parts["train"][t.column])
    numeric = [c for c in feature_cols if _is_numeric(kept[c])]
    categorical = [c for c in feature_cols if c not in numeric]
    pre = Preprocessor.fit(
        parts["train"], numeric, categorical, settings, tasks, len(kept), cfg.non_finite
    )
    splits = {}
    for name, rows in parts.items():
        X, C = pre.transform(rows, source)
        y = {t.name: _encode(t, rows[t.column], source) for t in tasks}
        splits[name] = Split(X=X, C=C, y=y, rows=rows[feature_cols].reset_index(drop=True))
    return PreparedData(pre, splits, digest, source, n_rows=len(kept))


# A text column is "numeric with strays" when at least this share of its values are numbers.
NUMERIC_SHARE = 0.9


def _read_numbers(
    frame: pd.DataFrame, cfg: DataConfig, feature_cols: list[str], source: str
) -> pd.DataFrame:
    """Numbers as the config says: strays coerced or refused, non-finite values refused or NaN.

    A text feature column of which at least 90 % of the present values read as
    numbers, but not all, is numeric with a few stray values (``"12,5"``, ``"n/a"``,
    ``"?"``): one-hot encoding it would silently throw the numbers away, so it is
    refused unless ``data.coerce_numeric`` lists it (strays become missing) or
    ``data.categorical`` does (it stays categorical). Below 90 % the column is
    categorical. Then every numeric column, targets included, is checked for inf,
    -inf and magnitudes beyond float32's range, which ``data.non_finite`` refuses
    (``error``) or turns into missing values (``missing``).
    """
    frame = frame.copy()
    for c in cfg.coerce_numeric:
        if c not in frame.columns:
            raise DataError(
                f"{source}: data.coerce_numeric lists '{c}', which is neither a feature nor a "
                "target"
            )
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    for c in cfg.categorical:
        if c not in feature_cols:
            raise DataError(f"{source}: data.categorical lists '{c}', which is not a feature")
        if _is_numeric(frame[c]):
            raise DataError(
                f"{source}: data.categorical lists column '{c}', which holds numbers; it "
                "applies to text columns only"
            )
    for c in feature_cols:
        if c in cfg.categorical or _is_numeric(frame[c]) or pd.api.types.is_bool_dtype(frame[c]):
            continue
        present = frame[c].dropna()
        parsed = pd.to_numeric(present.astype(str), errors="coerce")
        strays = present[parsed.isna().to_numpy()]
        if len(present) and len(strays) and 1 - len(strays) / len(present) >= NUMERIC_SHARE:
            raise DataError(
                f"{source}: column '{c}' holds numbers except for {len(strays)} of "
                f"{len(present)} values ({len(strays) / len(present):.1%}), e.g. "
                f"{short_repr(strays.iloc[0])}; fix those values, or list the column in "
                "data.coerce_numeric to read them as missing (or in data.categorical to keep "
                "it as categories)"
            )
    bad = {c: non_finite_rows(frame[c]) for c in frame.columns if _is_numeric(frame[c])}
    bad = {c: rows for c, rows in bad.items() if rows.any()}
    if bad and cfg.non_finite == "error":
        counts = {c: int(rows.sum()) for c, rows in bad.items()}
        raise DataError(
            non_finite_message(source, counts)
            + "; fix them, or set data.non_finite: missing to read them as missing"
        )
    for c, rows in bad.items():
        frame[c] = frame[c].astype(float).mask(rows)
    return frame


def _check_labels_in_every_split(
    parts: dict[str, pd.DataFrame], tasks: list[Task], source: str
) -> None:
    """Each task needs labels in train (to learn), val (the objective) and test (its metrics)."""
    for t in tasks:
        counts = {name: int(rows[t.column].notna().sum()) for name, rows in parts.items()}
        empty = [name for name, n in counts.items() if n == 0]
        if empty:
            raise DataError(
                f"{source}: target column '{t.column}' (task '{t.name}') has "
                f"{sum(counts.values())} labelled row(s), and the {'/'.join(empty)} split got "
                "none; it needs more labelled rows"
            )


def _encode(task: Task, values: pd.Series, source: str) -> np.ndarray:
    """``task.encode`` and a check that every present label became a finite number."""
    y = task.encode(values)
    bad = values.notna().to_numpy() & ~np.isfinite(y)
    if bad.any():
        raise DataError(
            f"{source}: target column '{task.column}' (task '{task.name}'): {int(bad.sum())} "
            f"label(s) do not encode to finite numbers, e.g. {short_repr(values[bad].iloc[0])}"
        )
    return y
