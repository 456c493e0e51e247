"""The drift check: a compact profile, PSI and tests per feature, the flag, the streaming sample."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from mtl_core.drift import OTHER, BatchSample, Profile, build_profile, compare, psi

NUMERIC = [f"x{i}" for i in range(6)]


def rows(n: int, seed: int, shift: dict[str, float] | None = None, shares=(0.5, 0.3, 0.2)):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    for col, delta in (shift or {}).items():
        frame[col] += delta
    frame["grp"] = rng.choice(["a", "b", "c"], size=n, p=list(shares))
    return frame


@pytest.fixture(scope="module")
def profile() -> Profile:
    return build_profile(rows(4000, seed=0), NUMERIC, ["grp"])


def test_profile_is_compact_and_survives_json(profile):
    big = build_profile(rows(40_000, seed=1), NUMERIC, ["grp"])
    size = len(json.dumps(profile.to_dict()))
    # Its size depends on the features, not on the rows.
    assert len(json.dumps(big.to_dict())) == pytest.approx(size, rel=0.1)
    assert size < 40_000
    back = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert back == profile
    assert back.features == [*NUMERIC, "grp"]
    x0 = back.numeric[0]
    assert len(x0.quantiles) == 200 and len(x0.edges) == 9 and len(x0.shares) == 11
    assert sum(x0.shares) == pytest.approx(1.0)
    assert back.categorical[0].levels == ["a", "b", "c", OTHER]


def test_small_training_split_stores_its_values():
    small = build_profile(rows(50, seed=0), NUMERIC, [])
    assert len(small.numeric[0].quantiles) == 50


def test_unshifted_batch_is_not_flagged(profile):
    report = compare(profile, rows(5000, seed=2), psi_threshold=0.1, p_value=0.01)
    assert not report.flagged, report.summary()
    assert report.drifted == []
    assert {f.feature for f in report.features} == {*NUMERIC, "grp"}
    assert all(f.psi < 0.05 for f in report.features)
    assert "0 of 7 feature(s) drifted" in report.summary()


def test_shifted_features_and_only_those_are_flagged(profile):
    batch = rows(5000, seed=3, shift={"x1": 0.5, "x4": -0.5}, shares=(0.3, 0.3, 0.4))
    report = compare(profile, batch, psi_threshold=0.1, p_value=0.01)
    assert report.flagged
    assert set(report.drifted) == {"x1", "x4", "grp"}
    by_name = {f.feature: f for f in report.features}
    assert by_name["x1"].test == "ks" and by_name["x1"].p_value < 1e-6
    assert by_name["grp"].test == "chi2" and by_name["grp"].p_value < 1e-6
    assert by_name["x1"].batch == pytest.approx(0.5, abs=0.1)
    # PSI of a mean shift of δ standard deviations is about δ² (here δ = 0.5).
    assert 0.15 < by_name["x1"].psi < 0.3
    assert report.features[0].psi == max(f.psi for f in report.features)  # sorted
    json.dumps(report.to_dict())  # the MLflow artifact


def test_small_batch_noise_is_not_drift(profile):
    """At 60 rows PSI alone would flag most features; the test's p-value keeps noise out."""
    reports = [compare(profile, rows(60, seed=s), 0.1, 0.01) for s in range(10, 40)]
    features = [f for r in reports for f in r.features]
    assert sum(f.psi >= 0.1 for f in features) / len(features) > 0.5
    assert sum(f.drifted for f in features) / len(features) <= 0.03


def test_unseen_categories_and_missing_values(profile):
    batch = rows(3000, seed=4)
    batch["grp"] = "zzz"  # never seen in training: pooled as <other>
    batch["x2"] = np.nan  # a feature that went missing entirely
    report = compare(profile, batch, psi_threshold=0.1, p_value=0.01)
    by_name = {f.feature: f for f in report.features}
    assert by_name["grp"].drifted and by_name["grp"].batch == "zzz"
    assert by_name["x2"].drifted and math.isnan(by_name["x2"].p_value)  # PSI alone decides
    assert not by_name["x0"].drifted


def test_missing_feature_is_an_error(profile):
    with pytest.raises(KeyError, match="x3"):
        compare(profile, rows(100, seed=5).drop(columns=["x3"]), 0.1, 0.01)


def test_psi_properties():
    a = np.array([0.25, 0.25, 0.5])
    assert psi(a, a) == 0.0
    b = np.array([0.5, 0.25, 0.25])
    assert psi(a, b) == pytest.approx(psi(b, a))
    assert psi(a, b) > 0
    assert math.isfinite(psi(a, np.array([0.5, 0.5, 0.0])))  # an empty bin is floored


def test_batch_sample_is_a_uniform_sample_of_all_chunks():
    sample = BatchSample(1000, seed=0)
    for start in range(0, 20_000, 3000):
        sample.add(pd.DataFrame({"v": np.arange(start, min(start + 3000, 20_000))}))
    got = sample.frame()["v"].to_numpy()
    assert sample.rows_seen == 20_000
    assert len(got) == 1000 and len(set(got)) == 1000
    assert got.mean() == pytest.approx(10_000, rel=0.05)  # not biased to early chunks
    assert (got >= 18_000).sum() == pytest.approx(100, abs=35)  # the last 10 % of rows


def test_batch_sample_keeps_everything_below_its_size():
    sample = BatchSample(100)
    sample.add(pd.DataFrame({"v": range(30)}))
    sample.add(pd.DataFrame({"v": range(30, 50)}))
    assert sorted(sample.frame()["v"]) == list(range(50))
    assert BatchSample(10).frame().empty
