"""Scoring: streaming throughput and memory against one predict call, and drift detection rates.

(a) Throughput and memory. A small two-task model (30 numeric and 2 categorical features,
trained for a few epochs: its quality does not matter here) is saved as the same pyfunc
package the pipeline logs. Synthetic Parquet inputs of growing size are then scored two ways,
each in a forked process of its own whose peak RSS is read with ``os.wait4`` (the child's
``ru_maxrss``):

- *streaming*: exactly what the ``mtl-score`` flow's ``score-batch`` and ``check-drift``
  tasks run (``mtl_core.scoring.read_chunks``/``score_stream`` into an atomic Parquet
  writer, a uniform sample for the drift check, ``mtl_core.drift.compare``), chunk by chunk;
- *one call*: ``pd.read_parquet`` of the whole file, then the pyfunc's ``predict`` on the whole
  frame, then ``to_parquet``.

The headline ratio is streaming rows/s (reading, checking, scoring, writing and sampling
included) over the rows/s of the one ``predict`` call alone (reading and writing excluded).
Model loading is outside both. Each configuration keeps the best of ``--repeats`` interleaved
runs, because the machine is shared. The full run also times the ``mtl score`` command end to
end once (Prefect's temporary API and the MLflow run included).

(b) Drift detection. A reference of 4,200 rows (the training split of ``configs/default.yaml``)
with 20 numeric features of four shapes (normal, log-normal, uniform, Poisson counts) is
profiled as a model would be; batches are drawn from the same distributions with a mean shift
of δ standard deviations injected into k = 5 of the 20 features, and every feature is checked.
The true-positive rate is the share of shifted features flagged, the false-positive rate the
share of unshifted ones flagged, over a grid of thresholds and batch sizes. The defaults of
the config's ``drift`` section are the combination that meets both targets down to the
smallest batch size; among those, the one with the largest worst-case margin to the targets
(then the higher PSI threshold, then the lower p-value).

Run ``python -m bench.scoring [--smoke] [--out DIR] [--only throughput|drift]``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import REPO, Report, fmt, met, parse_args, plt
from mtl_core.config import DataConfig, DriftConfig, ExperimentConfig, TaskConfig
from mtl_core.drift import BatchSample, build_profile, compare

TARGET_RATIO = 0.8
TARGET_FLAT = 1.25  # peak RSS at 4x the rows, streaming: at most this multiple
TARGET_TPR, TARGET_FPR = 0.95, 0.05
N_NUMERIC, LEVELS = 30, {"c0": list("abcde"), "c1": [f"k{i:02d}" for i in range(20)]}
SHAPES = ("normal", "lognormal", "uniform", "poisson")
PSI_GRID = (0.05, 0.1, 0.15, 0.2, 0.25)
P_GRID = (0.05, 0.01, 0.001)


def settings(smoke: bool) -> dict:
    """Sizes of the run."""
    if smoke:
        return {
            "train_rows": 1500,
            "epochs": 1,
            "rows": [20_000, 80_000],
            "one_call_rows": [20_000, 40_000],
            "chunk_rows": 5_000,
            "repeats": 1,
            "batch_sizes": [500, 5000],
            "deltas": [0.5],
            "drift_repeats": 5,
            "cli": False,
        }
    return {
        "train_rows": 20_000,
        "epochs": 3,
        "rows": [1_000_000, 4_000_000],
        "one_call_rows": [1_000_000, 2_000_000],
        "chunk_rows": 100_000,
        "repeats": 3,
        "batch_sizes": [250, 500, 1000, 2000, 5000],
        "deltas": [0.25, 0.5, 1.0],
        "drift_repeats": 100,
        "cli": True,
    }


# --------------------------------------------------------------------------- data


def features_frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Raw feature rows: ``x0..x29`` standard normal, ``c0`` (5 levels), ``c1`` (20 levels)."""
    frame = pd.DataFrame(rng.standard_normal((n, N_NUMERIC)), columns=_numeric_names())
    for col, levels in LEVELS.items():
        frame[col] = np.asarray(levels, dtype=object)[rng.integers(0, len(levels), n)]
    return frame


def _numeric_names() -> list[str]:
    return [f"x{j}" for j in range(N_NUMERIC)]


def training_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Features plus a regression target ``y0`` and a binary one ``y1``."""
    rng = np.random.default_rng(seed)
    frame = features_frame(n, rng)
    noise = rng.normal(scale=0.3, size=(2, n))
    frame["y0"] = frame["x0"] + 0.5 * frame["x1"] + (frame["c0"] == "a") + noise[0]
    frame["y1"] = (frame["x2"] - frame["x3"] + noise[1] > 0).astype(int)
    return frame


def write_input(path: Path, n: int, chunk: int, seed: int) -> None:
    """A Parquet file of ``n`` feature rows, written a row group at a time."""
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, chunk):
        table = pa.Table.from_pandas(
            features_frame(min(chunk, n - start), rng), preserve_index=False
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def train_model(path: Path, rows: int, epochs: int) -> None:
    """Train the small model and save it as the pipeline's pyfunc package."""
    import mlflow.pyfunc
    import torch

    from mtl_core.data import prepare_frame
    from mtl_core.integrations.serving import model_package
    from mtl_core.train import train_from_config

    torch.set_num_threads(1)  # no OpenMP pool in the parent: the workers are forked from it
    cfg = ExperimentConfig(
        data=DataConfig(
            source="file",
            path="bench",
            tasks=[
                TaskConfig(name="reg", column="y0", type="regression"),
                TaskConfig(name="cls", column="y1", type="binary"),
            ],
        ),
        train={"epochs": epochs, "batch_size": 256, "device": "cpu", "patience": None},
        model={"hidden": [64, 64]},
        baselines=False,
    )
    data = prepare_frame(training_frame(rows), cfg.data, "bench")
    net, _ = train_from_config(cfg, data)
    with model_package(net, cfg, data) as kwargs:
        mlflow.pyfunc.save_model(path=str(path), **kwargs)


# --------------------------------------------------------------------------- (a) workers


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stream_worker(model_dir: str, source: str, output: str, chunk_rows: int) -> dict:
    """What the flow's score-batch and check-drift tasks do, on a local model."""
    from mtl_core import scoring
    from mtl_core.integrations import models

    start_rss = _rss_kib()
    model = models.load(models.ModelRef(model_dir, model_dir))
    t0 = time.perf_counter()
    files = scoring.input_files(source)
    scoring.check_input(files, model.schema, model.id_column)
    writer = scoring.AtomicParquetWriter(Path(output))
    sample = BatchSample(DriftConfig().sample_rows)
    stats = scoring.score_stream(
        scoring.read_chunks(files, chunk_rows, model.schema, model.id_column),
        model.predict,
        model.schema,
        writer,
        constants={"model_version": "bench"},
        sample=sample,
    )
    report = compare(model.profile, sample.frame()[model.profile.features], 0.1, 0.01)
    scoring.move_into_place(writer.close(), Path(output))
    return {
        "rows": stats.rows,
        "seconds": time.perf_counter() - t0,
        "start_rss_kib": start_rss,
        "drifted": len(report.drifted),
    }


def one_call_worker(model_dir: str, source: str, output: str, chunk_rows: int) -> dict:
    """Read the whole file, one ``predict`` call, write the whole result."""
    import mlflow.pyfunc

    start_rss = _rss_kib()
    model = mlflow.pyfunc.load_model(model_dir)
    t0 = time.perf_counter()
    frame = pd.read_parquet(source)
    t1 = time.perf_counter()
    preds = model.predict(frame)
    t2 = time.perf_counter()
    preds.to_parquet(output)
    return {
        "rows": len(preds),
        "seconds": time.perf_counter() - t0,
        "predict_seconds": t2 - t1,
        "start_rss_kib": start_rss,
    }


def forked(fn, *args) -> dict:
    """Run ``fn(*args)`` in a forked child; its result plus the child's peak RSS (MiB)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        code = 0
        try:
            payload = {"ok": fn(*args)}
        except BaseException as exc:  # reported to the parent, which raises it
            payload, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
        with os.fdopen(write_end, "w") as out:
            json.dump(payload, out)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as inp:
        payload = json.loads(inp.read() or "{}")
    _, _, usage = os.wait4(pid, 0)
    if "ok" not in payload:
        raise RuntimeError(f"{fn.__name__} failed: {payload.get('error', 'no result')}")
    result = payload["ok"]
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["start_rss_mib"] = result.pop("start_rss_kib") / 1024
    return result


def run_cli(model_dir: Path, source: Path, tmp: Path) -> dict:
    """``mtl score`` end to end on a fresh SQLite store where the model is the champion."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL",)},
        "MTL_STATE_DIR": str(tmp / "state"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'state' / 'mlflow.db'}",
        "PYTHONPATH": str(REPO),
    }
    register = (
        "import mlflow\n"
        "from mtl_core.integrations import tracking\n"
        "client = tracking.get_client()\n"
        f"version = mlflow.register_model({str(model_dir)!r}, 'bench-scoring')\n"
        "client.set_registered_model_alias('bench-scoring', 'champion', version.version)\n"
    )
    subprocess.run([sys.executable, "-c", register], env=env, check=True, capture_output=True)
    out = tmp / "cli-out.parquet"
    cmd = [sys.executable, "-m", "flows.cli", "score", "--input", str(source), "--output", str(out)]
    cmd += ["--model-uri", "models:/bench-scoring@champion"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"mtl score failed:\n{text[-3000:]}")
    rate = re.search(r"scored:\s+([\d,]+) rows .*?, ([\d,]+) rows/s", text)
    return {
        "wall_seconds": wall,
        "rows": int(rate[1].replace(",", "")),
        "stage_rows_s": float(rate[2].replace(",", "")),
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def throughput(report: Report, s: dict, tmp: Path) -> dict:
    """Part (a): returns its results."""
    model_dir = tmp / "model"
    train_model(model_dir, s["train_rows"], s["epochs"])
    inputs = {}
    for n in sorted(set(s["rows"] + s["one_call_rows"])):
        inputs[n] = tmp / f"rows-{n}.parquet"
        write_input(inputs[n], n, s["chunk_rows"], seed=n % 9973)
    runs: dict[str, list[dict]] = {}
    for rep in range(s["repeats"]):  # interleaved, best kept
        for n in s["rows"]:
            out = tmp / f"stream-{n}.parquet"
            r = forked(stream_worker, str(model_dir), str(inputs[n]), str(out), s["chunk_rows"])
            runs.setdefault(f"stream/{n}", []).append(r)
        for n in s["one_call_rows"]:
            out = tmp / f"one-{n}.parquet"
            r = forked(one_call_worker, str(model_dir), str(inputs[n]), str(out), s["chunk_rows"])
            runs.setdefault(f"one/{n}", []).append(r)
        print(f"repeat {rep + 1}/{s['repeats']} done", flush=True)
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    peak = {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    rows = []
    for key, r in best.items():
        mode, n = key.split("/")
        rows.append(
            [
                "streaming (mtl-score's tasks)"
                if mode == "stream"
                else "one call: read, predict, write",
                fmt(int(n)),
                f"{r['seconds']:.2f}",
                fmt(r["rows"] / r["seconds"], 0),
                fmt(r["rows"] / r["predict_seconds"], 0) if "predict_seconds" in r else "–",
                f"{peak[key]:,.0f}",
                f"{peak[key] - r['start_rss_mib']:,.0f}",
            ]
        )
    report.table(
        [
            "mode",
            "rows",
            "seconds",
            "rows/s",
            "rows/s of predict alone",
            "peak RSS MiB",
            "peak over start MiB",
        ],
        rows,
        caption=f"Scoring {len(LEVELS) + N_NUMERIC} features, chunks of {s['chunk_rows']:,} rows, "
        f"best of {s['repeats']} (peak RSS: the highest)",
    )
    n1, n4 = s["rows"][0], s["rows"][-1]
    one1 = best[f"one/{s['one_call_rows'][0]}"]
    stream_rate = best[f"stream/{n1}"]["rows"] / best[f"stream/{n1}"]["seconds"]
    predict_rate = one1["rows"] / one1["predict_seconds"]
    ratio = stream_rate / predict_rate
    flat = peak[f"stream/{n4}"] / peak[f"stream/{n1}"]
    growth = peak[f"stream/{n4}"] - peak[f"stream/{n1}"]
    one_growth = peak[f"one/{s['one_call_rows'][-1]}"] / peak[f"one/{s['one_call_rows'][0]}"]
    report.add(
        f"Streaming scores {fmt(stream_rate, 0)} rows/s at {n1:,} rows against "
        f"{fmt(predict_rate, 0)} rows/s for one `predict` call on the whole frame: "
        f"**{ratio:.2f}x** (target ≥ {TARGET_RATIO}x: {met(ratio, TARGET_RATIO)}). "
        f"Its peak RSS goes from {peak[f'stream/{n1}']:,.0f} MiB at {n1:,} rows to "
        f"{peak[f'stream/{n4}']:,.0f} MiB at {n4:,} rows: **{flat:.2f}x** for {n4 // n1}x the rows "
        f"({growth:+,.0f} MiB; target ≤ {TARGET_FLAT}x: {met(flat, TARGET_FLAT, False)}); one "
        f"call grows {one_growth:.2f}x from {s['one_call_rows'][0]:,} to "
        f"{s['one_call_rows'][-1]:,} rows."
    )
    out = {
        "ratio": ratio,
        "stream_rows_s": stream_rate,
        "predict_rows_s": predict_rate,
        "rss_ratio": flat,
        "rss_growth_mib": growth,
        "one_call_rss_ratio": one_growth,
        "runs": {k: v for k, v in best.items()},
        "peak_rss_mib": peak,
    }
    if s["cli"]:
        cli = run_cli(model_dir, inputs[n1], tmp)
        out["cli"] = cli
        report.add(
            f"`mtl score` end to end on {cli['rows']:,} rows (Prefect's temporary API, MLflow "
            f"run, artifacts and drift report included): {cli['wall_seconds']:.1f} s wall, "
            f"peak RSS {cli['peak_rss_mib']:,.0f} MiB; its scoring stage reported "
            f"{fmt(cli['stage_rows_s'], 0)} rows/s."
        )
    return out


# --------------------------------------------------------------------------- (b) drift


def drift_frame(
    n: int, d: int, rng: np.random.Generator, shift: dict[int, float] | None = None
) -> pd.DataFrame:
    """``n`` rows of ``d`` features cycling through SHAPES, some with a mean shift.

    ``shift`` maps a feature's index to δ: its mean moves by δ of its standard deviation.
    Continuous features move by adding that amount; count features are drawn with the rate
    moved by it instead, so they stay counts (an added fraction would leave their PSI bins,
    which sit between integers, unchanged).
    """
    shift = shift or {}
    cols = {}
    for j in range(d):
        delta = shift.get(j, 0.0)
        shape = SHAPES[j % len(SHAPES)]
        if shape == "normal":
            cols[f"f{j}"] = rng.standard_normal(n) + delta
        elif shape == "lognormal":
            sd = math.sqrt((math.e**0.25 - 1) * math.e**0.25)  # of lognormal(0, 0.5)
            cols[f"f{j}"] = rng.lognormal(0, 0.5, n) + delta * sd
        elif shape == "uniform":
            cols[f"f{j}"] = rng.uniform(0, 1, n) + delta * math.sqrt(1 / 12)
        else:
            cols[f"f{j}"] = rng.poisson(3.0 + delta * math.sqrt(3.0), n).astype(float)
    return pd.DataFrame(cols)


def detection(s: dict, n_ref: int = 4200, d: int = 20, k: int = 5, seed: int = 0) -> dict:
    """PSI and p-values of every feature of every batch, per batch size and shift."""
    rng = np.random.default_rng(seed)
    ref = drift_frame(n_ref, d, rng)
    settings = DriftConfig()
    profile = build_profile(
        ref, list(ref.columns), [], bins=settings.bins, quantiles=settings.quantiles
    )
    out = {}
    for delta in s["deltas"]:
        for b in s["batch_sizes"]:
            psis, ps, shifted = [], [], []
            for _ in range(s["drift_repeats"]):
                chosen = rng.choice(d, size=k, replace=False)
                batch = drift_frame(b, d, rng, dict.fromkeys(chosen.tolist(), delta))
                sample = batch.sample(min(b, settings.sample_rows), random_state=0)
                rep = compare(profile, sample, 1.0, 0.5)
                by = {f.feature: f for f in rep.features}
                mask = np.zeros(d, dtype=bool)
                mask[chosen] = True
                psis.append([by[f"f{j}"].psi for j in range(d)])
                ps.append([by[f"f{j}"].p_value for j in range(d)])
                shifted.append(mask)
            out[(delta, b)] = (np.asarray(psis), np.asarray(ps), np.asarray(shifted))
    return out


def rates(psis: np.ndarray, ps: np.ndarray, shifted: np.ndarray, psi_t: float, p_t: float):
    """True- and false-positive rates of the flag at thresholds ``psi_t`` and ``p_t``."""
    flag = (psis >= psi_t) & ((ps < p_t) | np.isnan(ps))
    return float(flag[shifted].mean()), float(flag[~shifted].mean())


def drift(report: Report, s: dict) -> dict:
    """Part (b): returns its results, the chosen thresholds among them."""
    data = detection(s)
    sizes = s["batch_sizes"]
    grid = []
    for psi_t in PSI_GRID:
        for p_t in P_GRID:
            per = {b: rates(*data[(0.5, b)], psi_t, p_t) for b in sizes}
            ok = [b for b in sizes if per[b][0] >= TARGET_TPR and per[b][1] <= TARGET_FPR]
            # The smallest batch size from which on every larger one meets the targets too.
            holds = next((b for i, b in enumerate(sizes) if all(x in ok for x in sizes[i:])), None)
            grid.append({"psi": psi_t, "p": p_t, "rates": per, "holds_from": holds})
    for g in grid:  # the worst margin to either target over the sizes where it holds
        held = [b for b in sizes if g["holds_from"] and b >= g["holds_from"]]
        g["margin"] = min(
            (min(g["rates"][b][0] - TARGET_TPR, TARGET_FPR - g["rates"][b][1]) for b in held),
            default=-1.0,
        )
    meets = [g for g in grid if g["holds_from"] is not None]
    chosen = (
        min(meets, key=lambda g: (g["holds_from"], -round(g["margin"], 6), -g["psi"], g["p"]))
        if meets
        else None
    )
    default = DriftConfig()
    report.table(
        ["PSI ≥", "p <", *[f"TPR / FPR at {b:,} rows" for b in sizes], "targets met from"],
        [
            [
                g["psi"],
                g["p"],
                *[f"{100 * g['rates'][b][0]:.1f}% / {100 * g['rates'][b][1]:.1f}%" for b in sizes],
                f"{g['holds_from']:,} rows" if g["holds_from"] else "–",
            ]
            for g in grid
        ],
        caption=f"Shift of 0.5 std in 5 of 20 features, {s['drift_repeats']} batches per size "
        "(TPR: shifted features flagged; FPR: unshifted features flagged)",
    )
    shift_rows = []
    for delta in s["deltas"]:
        shift_rows.append(
            [
                f"{delta} std",
                *[
                    "{:.1f}% / {:.1f}%".format(
                        *(
                            100 * x
                            for x in rates(
                                *data[(delta, b)], default.psi_threshold, default.p_value
                            )
                        )
                    )
                    for b in sizes
                ],
            ]
        )
    report.table(
        ["mean shift", *[f"TPR / FPR at {b:,} rows" for b in sizes]],
        shift_rows,
        caption=f"At the defaults (PSI ≥ {default.psi_threshold}, p < {default.p_value}), "
        "by shift size",
    )
    at_default = {b: rates(*data[(0.5, b)], default.psi_threshold, default.p_value) for b in sizes}
    assumed = next(
        (
            g["holds_from"]
            for g in grid
            if (g["psi"], g["p"]) == (default.psi_threshold, default.p_value)
        ),
        None,
    )
    tpr, fpr = at_default[sizes[-1]]
    if chosen and s["drift_repeats"] < 50:
        report.add(
            f"Smoke sizes: {s['drift_repeats']} batches per size are too few to choose "
            f"thresholds; the rule would pick PSI ≥ {chosen['psi']} and p < {chosen['p']} here. "
            f"At {sizes[-1]:,} rows the defaults (PSI ≥ {default.psi_threshold}, "
            f"p < {default.p_value}) catch {100 * tpr:.1f}% of shifted features and flag "
            f"{100 * fpr:.1f}% of unshifted ones."
        )
    elif chosen:
        same = (chosen["psi"], chosen["p"]) == (default.psi_threshold, default.p_value)
        report.add(
            f"The rule (meet both targets from the smallest batch size; then the largest worst "
            f"margin to the targets; then the higher PSI threshold and the lower p-value) picks "
            f"**PSI ≥ {chosen['psi']} and "
            f"p < {chosen['p']}**, which meet the targets for batches of "
            f"{chosen['holds_from']:,} rows or more; the config's defaults are "
            f"PSI ≥ {default.psi_threshold} and p < {default.p_value}"
            + (" (the same)." if same else " (**not** the same: update `DriftConfig`).")
            + f" At {sizes[-1]:,} rows, the defaults catch {100 * tpr:.1f}% of shifted features "
            f"(target ≥ {100 * TARGET_TPR:.0f}%: {met(tpr, TARGET_TPR)}) and flag "
            f"{100 * fpr:.1f}% of unshifted ones (target ≤ {100 * TARGET_FPR:.0f}%: "
            f"{met(fpr, TARGET_FPR, False)}). Larger batches are compared through a uniform "
            f"sample of {default.sample_rows:,} rows, so they behave as {default.sample_rows:,}."
        )
    else:
        report.add("No combination of the grid meets both targets at these batch sizes.")
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5.5, 3.2))
    for delta, style in zip(s["deltas"], ("o-", "s--", "^:"), strict=False):
        tprs = [rates(*data[(delta, b)], default.psi_threshold, default.p_value)[0] for b in sizes]
        ax.plot(sizes, tprs, style, label=f"TPR, shift {delta} std")
    fprs = [at_default[b][1] for b in sizes]
    ax.plot(sizes, fprs, "k--", label="FPR (unshifted features)")
    ax.axhline(TARGET_TPR, color="tab:green", linewidth=0.8)
    ax.axhline(TARGET_FPR, color="tab:red", linewidth=0.8)
    ax.set(xscale="log", xlabel="rows per batch", ylabel="rate", ylim=(-0.02, 1.02))
    ax.set_xticks(sizes, labels=[f"{b:,}" for b in sizes])
    ax.minorticks_off()
    ax.set_title(f"Drift flag at PSI ≥ {default.psi_threshold}, p < {default.p_value}", fontsize=10)
    ax.legend(fontsize=7)
    report.figure(fig, "scoring_drift", "true and false positive rates of the drift flag")
    return {
        "tpr": tpr,
        "fpr": fpr,
        "batch_size": sizes[-1],
        "assumed_batch_rows": assumed,
        "defaults": {"psi_threshold": default.psi_threshold, "p_value": default.p_value},
        "chosen": None
        if chosen is None
        else {
            "psi_threshold": chosen["psi"],
            "p_value": chosen["p"],
            "holds_from": chosen["holds_from"],
        },
        "at_default": {str(b): {"tpr": r[0], "fpr": r[1]} for b, r in at_default.items()},
        "grid": [
            {
                **{k: g[k] for k in ("psi", "p", "holds_from", "margin")},
                "rates": {str(b): r for b, r in g["rates"].items()},
            }
            for g in grid
        ],
    }


def main() -> None:
    def extra(parser) -> None:
        parser.add_argument("--only", choices=["throughput", "drift"], help="run one part")

    args = parse_args(__doc__.splitlines()[0], extra)
    s = settings(args.smoke)
    report = Report(
        "scoring",
        "Scoring: streaming throughput, memory and drift detection",
        "bench.scoring",
        args.out,
        args.smoke,
    )
    if args.only != "drift":
        with tempfile.TemporaryDirectory(prefix="mtl-bench-scoring-") as tmp:
            report.results["throughput"] = throughput(report, s, Path(tmp))
        report.results["ratio"] = report.results["throughput"]["ratio"]
        report.results["rss_ratio"] = report.results["throughput"]["rss_ratio"]
    if args.only != "throughput":
        report.results["drift"] = drift(report, s)
    report.write()


if __name__ == "__main__":
    main()
