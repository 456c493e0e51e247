"""Rows of the scoring and serving tests: six numeric features, a category, an id, two targets."""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = [f"x{i}" for i in range(6)] + ["grp"]


def make_rows(n: int, seed: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    """Rows of the scoring tests' data: ``rid``, the features, and targets ``y0`` and ``y1``.

    ``shift`` adds a constant (in standard deviations) to numeric features, after the
    targets are drawn, as a drifted input would.
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 6)), columns=FEATURES[:6])
    frame["grp"] = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    noise = rng.normal(scale=0.3, size=(2, n))
    frame["y0"] = frame["x0"] + 0.5 * frame["x1"] + (frame["grp"] == "a") + noise[0]
    frame["y1"] = (frame["x0"] - frame["x2"] + noise[1] > 0).astype(int)
    for col, delta in (shift or {}).items():
        frame[col] += delta
    frame.insert(0, "rid", np.arange(100_000 + seed * 10_000, 100_000 + seed * 10_000 + n))
    return frame
