"""Input drift: a compact profile of the training inputs, and a per-feature check of a batch.

At training time :func:`build_profile` summarises every feature of the training split:

- numeric: a grid of at most ``quantiles`` quantiles (all values when the split holds fewer),
  the share of training rows in each of ``bins`` quantile bins plus a missing-value bin, and
  the mean and standard deviation;
- categorical: the count of each level (the ``max_categories`` most frequent ones, the rest
  pooled as ``<other>``); a missing value is a level of its own.

At scoring time :func:`compare` measures each feature of a batch against that profile:

- PSI, the population stability index over the reference bins (or levels),
  ``sum_b (s_b - r_b) ln(s_b / r_b)`` with shares ``s`` (batch) and ``r`` (reference);
  a symmetric KL divergence, size-free, about δ² for a mean shift of δ standard deviations
  of a normal feature (Yurdakul, "Statistical properties of the population stability
  index", 2018);
- a test that the batch comes from the reference distribution: two-sample
  Kolmogorov-Smirnov (``scipy.stats.ks_2samp``) of the batch against the quantile grid for a
  numeric feature, chi-square of homogeneity (``scipy.stats.chi2_contingency``) of the level
  counts for a categorical one. The grid stands in for the training sample at the grid's
  size; it varies less than a random sample of that size would, so the KS p-value is
  conservative (too high, never too low).

A feature drifts when its PSI is at least ``psi_threshold`` *and* its p-value is below
``p_value``: the first says the change is large enough to matter, the second that it is not
sampling noise. When the test cannot run (no values on one side), PSI alone decides.

A batch streamed in chunks is compared through :class:`BatchSample`, a uniform random sample
of fixed size, so that the check costs the same, and means the same, whatever the batch size.

This module is pure: numpy, pandas and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mtl_core.preprocess import as_category

PROFILE_VERSION = 1
OTHER = "<other>"
EPS = 1e-4  # floor of a bin's share in PSI: an empty bin would make it infinite


# --------------------------------------------------------------------------- the profile


@dataclass
class NumericProfile:
    """Reference summary of one numeric feature.

    Attributes:
        name: Column name.
        quantiles: Sorted quantile grid of the non-missing training values.
        edges: Interior edges of the PSI bins (quantiles of the training values).
        shares: Share of training rows per bin, then the share of missing values.
        mean: Mean of the non-missing values.
        std: Their standard deviation.
        n: Training rows.
    """

    name: str
    quantiles: list[float]
    edges: list[float]
    shares: list[float]
    mean: float
    std: float
    n: int


@dataclass
class CategoricalProfile:
    """Reference summary of one categorical feature: counts per level, ``<other>`` last."""

    name: str
    levels: list[str]
    counts: list[int]


@dataclass
class Profile:
    """The reference profile of a model's training inputs.

    Attributes:
        numeric: One entry per numeric feature.
        categorical: One entry per categorical feature.
        n_rows: Training rows it summarises.
        settings: Drift thresholds chosen at training time (``drift`` config section).
    """

    numeric: list[NumericProfile]
    categorical: list[CategoricalProfile]
    n_rows: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """Profiled feature columns."""
        return [p.name for p in self.numeric] + [p.name for p in self.categorical]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        return {"version": PROFILE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Profile:
        """Rebuild a profile written by :meth:`to_dict`."""
        if state.get("version") != PROFILE_VERSION:
            raise ValueError(f"drift profile version {state.get('version')!r} is not supported")
        return cls(
            numeric=[NumericProfile(**p) for p in state["numeric"]],
            categorical=[CategoricalProfile(**p) for p in state["categorical"]],
            n_rows=int(state["n_rows"]),
            settings=dict(state.get("settings", {})),
        )


def _round(values: np.ndarray) -> list[float]:
    # Seven significant digits keep the stored profile small; the tests need no more.
    return [float(f"{v:.7g}") for v in values]


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value (``len(edges) + 1`` bins), the missing-value bin after them."""
    idx = np.searchsorted(edges, values, side="right")
    return np.where(np.isnan(values), len(edges) + 1, idx)


def _numeric_values(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _numeric_profile(name: str, series: pd.Series, bins: int, quantiles: int) -> NumericProfile:
    x = _numeric_values(series)
    finite = np.sort(x[~np.isnan(x)])
    if len(finite) <= quantiles:
        grid = finite  # the sample itself: the KS test is then exact
    else:
        grid = np.quantile(finite, (np.arange(quantiles) + 0.5) / quantiles)
    edges = (
        np.unique(np.quantile(finite, np.arange(1, bins) / bins)) if len(finite) else np.array([])
    )
    counts = np.bincount(_bin_index(x, edges), minlength=len(edges) + 2)
    return NumericProfile(
        name=name,
        quantiles=_round(grid),
        edges=_round(edges),
        shares=[float(c) / max(1, len(x)) for c in counts],
        mean=float(finite.mean()) if len(finite) else math.nan,
        std=float(finite.std()) if len(finite) else math.nan,
        n=len(x),
    )


def _categorical_profile(name: str, series: pd.Series, max_categories: int) -> CategoricalProfile:
    counts = as_category(series).value_counts()
    kept = counts.iloc[:max_categories]
    other = int(counts.iloc[max_categories:].sum())
    return CategoricalProfile(
        name=name,
        levels=[str(v) for v in kept.index] + [OTHER],
        counts=[int(c) for c in kept.to_numpy()] + [other],
    )


def build_profile(
    rows: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    *,
    bins: int = 10,
    quantiles: int = 200,
    max_categories: int = 50,
    settings: dict[str, Any] | None = None,
) -> Profile:
    """Summarise the training rows' features (see the module docstring).

    Args:
        rows: Raw training rows holding the feature columns.
        numeric: Numeric feature columns.
        categorical: Categorical feature columns.
        bins: PSI bins per numeric feature (quantile bins of the training values).
        quantiles: Size of the stored quantile grid per numeric feature.
        max_categories: Levels kept per categorical feature; the rest count as ``<other>``.
        settings: Thresholds to carry with the profile (the ``drift`` config section).

    Returns:
        The profile; its size depends on the number of features, not of rows.
    """
    return Profile(
        numeric=[_numeric_profile(c, rows[c], bins, quantiles) for c in numeric],
        categorical=[_categorical_profile(c, rows[c], max_categories) for c in categorical],
        n_rows=len(rows),
        settings=dict(settings or {}),
    )


# --------------------------------------------------------------------------- the comparison


@dataclass
class FeatureDrift:
    """How one feature of a batch compares with its reference.

    Attributes:
        feature: Column name.
        kind: ``numeric`` or ``categorical``.
        psi: Population stability index.
        test: ``ks`` or ``chi2``.
        statistic: The test's statistic (KS distance, or chi-square).
        p_value: The test's p-value (NaN when it cannot run).
        drifted: PSI at or above the threshold and p-value below it.
        reference: Reference mean (numeric) or most frequent level (categorical).
        batch: The same in the batch.
    """

    feature: str
    kind: str
    psi: float
    test: str
    statistic: float
    p_value: float
    drifted: bool
    reference: float | str
    batch: float | str


@dataclass
class DriftReport:
    """The drift check of one batch: every feature, the thresholds, and the verdict."""

    features: list[FeatureDrift]
    rows: int
    psi_threshold: float
    p_value: float

    @property
    def drifted(self) -> list[str]:
        """Features that drifted, most shifted (highest PSI) first."""
        return [f.feature for f in self.features if f.drifted]

    @property
    def flagged(self) -> bool:
        """Whether any feature drifted."""
        return any(f.drifted for f in self.features)

    def summary(self) -> str:
        """One line for logs and summaries."""
        head = (
            f"{len(self.drifted)} of {len(self.features)} feature(s) drifted "
            f"(PSI >= {self.psi_threshold:g} and p < {self.p_value:g}, {self.rows:,} rows compared)"
        )
        if not self.flagged:
            return head
        shown = ", ".join(f"{f.feature} (PSI {f.psi:.3f})" for f in self.features if f.drifted)
        return f"{head}: {shown}" if len(self.drifted) <= 10 else head

    def records(self) -> list[dict[str, Any]]:
        """One row per feature, for a table."""
        return [
            {
                "feature": f.feature,
                "kind": f.kind,
                "psi": round(f.psi, 4),
                "test": f.test,
                "statistic": round(f.statistic, 4) if math.isfinite(f.statistic) else None,
                "p_value": float(f"{f.p_value:.3g}") if math.isfinite(f.p_value) else None,
                "drifted": f.drifted,
                "reference": round(f.reference, 4)
                if isinstance(f.reference, float)
                else f.reference,
                "batch": round(f.batch, 4) if isinstance(f.batch, float) else f.batch,
            }
            for f in self.features
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "rows": self.rows,
            "psi_threshold": self.psi_threshold,
            "p_value": self.p_value,
            "flagged": self.flagged,
            "drifted": self.drifted,
            "features": self.records(),
        }


def psi(reference: np.ndarray, batch: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins.

    Shares are floored at :data:`EPS` so that an empty bin counts as rare, not impossible.
    """
    r = np.clip(np.asarray(reference, dtype=np.float64), EPS, None)
    b = np.clip(np.asarray(batch, dtype=np.float64), EPS, None)
    return float(np.sum((b - r) * np.log(b / r)))


def _compare_numeric(ref: NumericProfile, series: pd.Series) -> tuple[float, float, float, float]:
    x = _numeric_values(series)
    edges = np.asarray(ref.edges, dtype=np.float64)
    counts = np.bincount(_bin_index(x, edges), minlength=len(edges) + 2)
    value = psi(np.asarray(ref.shares), counts / max(1, len(x)))
    finite = x[~np.isnan(x)]
    if len(finite) and ref.quantiles:
        result = stats.ks_2samp(np.asarray(ref.quantiles), finite)
        stat, p = float(result.statistic), float(result.pvalue)
    else:
        stat, p = math.nan, math.nan
    return value, stat, p, float(finite.mean()) if len(finite) else math.nan


def _compare_categorical(
    ref: CategoricalProfile, series: pd.Series
) -> tuple[float, float, float, str]:
    levels = ref.levels[:-1]
    values = as_category(series)
    known = values.where(values.isin(levels), OTHER)
    batch = known.value_counts().reindex(ref.levels, fill_value=0).to_numpy(dtype=np.float64)
    counts = np.asarray(ref.counts, dtype=np.float64)
    value = psi(counts / max(1.0, counts.sum()), batch / max(1.0, batch.sum()))
    table = np.vstack([counts, batch])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] >= 2 and batch.sum() > 0 and counts.sum() > 0:
        result = stats.chi2_contingency(table)
        stat, p = float(result.statistic), float(result.pvalue)
    else:  # a single level on both sides: nothing can differ
        stat, p = 0.0, 1.0
    top = str(values.mode().iloc[0]) if len(values) else ""
    return value, stat, p, top


def compare(
    profile: Profile, batch: pd.DataFrame, psi_threshold: float, p_value: float
) -> DriftReport:
    """Compare a batch's features with the reference profile, feature by feature.

    Args:
        profile: The model's reference profile.
        batch: Raw rows holding every profiled feature (a sample of a large batch: see
            :class:`BatchSample`).
        psi_threshold: PSI at or above which a significant change counts as drift.
        p_value: Significance level of the per-feature test.

    Returns:
        The report, features ordered by decreasing PSI.

    Raises:
        KeyError: A profiled feature is missing from ``batch``.
    """
    missing = [c for c in profile.features if c not in batch.columns]
    if missing:
        raise KeyError(f"batch lacks profiled feature(s) {missing}")
    out = []
    for ref in profile.numeric:
        value, stat, p, mean = _compare_numeric(ref, batch[ref.name])
        out.append(FeatureDrift(ref.name, "numeric", value, "ks", stat, p, False, ref.mean, mean))
    for ref in profile.categorical:
        value, stat, p, top = _compare_categorical(ref, batch[ref.name])
        ref_top = ref.levels[int(np.argmax(ref.counts))] if ref.counts else ""
        out.append(
            FeatureDrift(ref.name, "categorical", value, "chi2", stat, p, False, ref_top, top)
        )
    for f in out:
        significant = f.p_value < p_value if math.isfinite(f.p_value) else True
        f.drifted = f.psi >= psi_threshold and significant
    out.sort(key=lambda f: -f.psi)
    return DriftReport(out, len(batch), psi_threshold, p_value)


# --------------------------------------------------------------------------- streaming sample


class BatchSample:
    """A uniform random sample, without replacement, of rows streamed in chunks.

    Every row gets a uniform random key; the ``size`` rows with the smallest keys are kept
    (bottom-k sampling), which is a uniform sample of everything seen so far.

    Args:
        size: Rows to keep.
        seed: Seed of the keys.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.rows_seen = 0
        self._rng = np.random.default_rng(seed)
        self._frame: pd.DataFrame | None = None
        self._keys = np.empty(0)

    def add(self, chunk: pd.DataFrame) -> None:
        """Offer a chunk's rows to the sample."""
        keys = self._rng.random(len(chunk))
        self.rows_seen += len(chunk)
        if self._frame is not None and len(self._keys) >= self.size:
            keep = keys < self._keys.max()  # only these can enter a full sample
            chunk, keys = chunk[keep], keys[keep]
            if not len(keys):
                return
        parts = [chunk] if self._frame is None else [self._frame, chunk]
        frame = pd.concat(parts, ignore_index=True)
        keys = np.concatenate([self._keys, keys])
        if len(keys) > self.size:
            top = np.argpartition(keys, self.size - 1)[: self.size]
            frame, keys = frame.iloc[top].reset_index(drop=True), keys[top]
        self._frame, self._keys = frame, keys

    def frame(self) -> pd.DataFrame:
        """The sample (empty when nothing was added)."""
        return self._frame if self._frame is not None else pd.DataFrame()
