"""The ``mtl-score`` flow: score a batch with the champion, check it for drift, write predictions.

The alias (``models:/<name>@champion``) is resolved to one registry version when the run
starts and only that version is loaded, so a promotion during the run cannot mix two models.
The input (a file, a folder or a glob of CSV/Parquet files) is checked against the model's
signature before any row is scored, then streamed through in chunks; predictions go to a
temporary Parquet file that is moved to the output name only when everything succeeded.

Each run is an MLflow run in ``<training experiment>-scoring``, tagged with the model's name,
version and alias and linked to the training run; it holds the row counts, the distribution
of the scores per task and the drift report, which is also a Prefect artifact.
"""

from __future__ import annotations

import base64
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import LoggedModelInput
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import flows  # noqa: F401  (applies the embedded defaults before Prefect reads settings)
from flows.params import ScoreParams
from mtl_core import drift, scoring
from mtl_core.config import DriftConfig
from mtl_core.errors import ConfigError, DataError, DriftError, MTLError
from mtl_core.integrations import figures, models, tracking
from mtl_core.integrations.models import LoadedModel


def _retry_unless_expected(task, task_run, state) -> bool:
    """Retry server trouble, not a bad input or a missing model (those fail the same again)."""
    try:
        state.result()
    except MTLError:
        return False
    except Exception:
        return True
    return True


SERVER_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 10],
    "retry_condition_fn": _retry_unless_expected,
}


@dataclass
class ScoringRun:
    """The MLflow run of one scoring flow run."""

    experiment_id: str
    run_id: str
    url: str


@dataclass
class ScoredBatch:
    """Predictions written to ``temp``, waiting to be moved to ``output``."""

    temp: Path
    output: Path
    stats: scoring.ScoreStats
    sample: pd.DataFrame  # model inputs and predictions (``pred:``) of a uniform sample


def chunk_done(chunks: int, rows: int) -> None:
    """Progress after each chunk (tests replace it to act between chunks)."""
    print(f"scored chunk {chunks}: {rows:,} rows so far")


def drift_settings(params: ScoreParams, model: LoadedModel) -> DriftConfig:
    """The model's ``drift`` section (from training), with the run's parameters over it."""
    stored = model.profile.settings if model.profile else {}
    base = DriftConfig.model_validate(
        {k: v for k, v in stored.items() if k in DriftConfig.model_fields}
    )
    changes = {
        "psi_threshold": params.psi_threshold,
        "p_value": params.p_value,
        "sample_rows": params.sample_rows,
        "fail": params.fail_on_drift,
    }
    return base.model_copy(update={k: v for k, v in changes.items() if v is not None})


def output_path(template: str, version: str, started: time.struct_time) -> Path:
    """The output file: ``{date}``, ``{time}`` and ``{version}`` filled in, made absolute."""
    try:
        name = template.format(
            date=time.strftime("%Y-%m-%d", started),
            time=time.strftime("%H%M%S", started),
            version=version,
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"output '{template}': bad placeholder ({exc}); use {{date}}, {{time}} or {{version}}"
        ) from None
    path = Path(name).expanduser().resolve()
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise ConfigError(f"output '{template}': expected a .parquet file name")
    return path


def _run_url(uri: str, experiment_id: str, run_id: str) -> str:
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


# --------------------------------------------------------------------------- tasks


@task(name="load-model", cache_policy=NO_CACHE, **SERVER_RETRIES)
def load_model(model_uri: str) -> LoadedModel:
    """Resolve the alias to one version, once, and load that version."""
    ref = models.resolve(tracking.get_client(), model_uri)
    get_run_logger().info(
        f"model {model_uri} -> {ref.uri}" + (f" (training run {ref.run_id})" if ref.run_id else "")
    )
    return models.load(ref)


@task(name="find-input", cache_policy=NO_CACHE)
def find_input(spec: str, model: LoadedModel) -> list[Path]:
    """The input files, each checked against the model's signature (and row-id column)."""
    files = scoring.input_files(spec)
    scoring.check_input(files, model.schema, model.id_column)
    return files


@task(name="start-scoring-run", cache_policy=NO_CACHE, **SERVER_RETRIES)
def start_scoring_run(
    model: LoadedModel, params: ScoreParams, files: list[Path], output: Path
) -> ScoringRun:
    """Open the scoring run: model name, version, alias, the training run, the input."""
    client = tracking.get_client()
    ref = model.ref
    training_experiment, training_url = None, None
    if ref.run_id:
        training = client.get_run(ref.run_id)
        training_experiment = client.get_experiment(training.info.experiment_id).name
        training_url = _run_url(client.tracking_uri, training.info.experiment_id, ref.run_id)
    name = params.experiment or f"{training_experiment or ref.name or 'mtl'}-scoring"
    exp_id = tracking.ensure_experiment(client, name)
    tags = {
        "model.name": ref.name or "",
        "model.version": ref.version or "",
        "model.alias": ref.alias or "",
        "model.uri": ref.uri,
        "model.requested_uri": ref.requested,
        "training.run_id": ref.run_id or "",
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
    }
    if training_url:
        tags["training.run_url"] = training_url
        tags["mlflow.note.content"] = (
            f"Scored with `{ref.uri}` (asked for `{ref.requested}`), trained in run "
            f"[{ref.run_id}]({training_url})."
        )
    label = f"v{ref.version}" if ref.version else ref.uri
    run_name = f"score | {ref.name or 'model'} {label} | {time.strftime('%Y-%m-%d %H:%M')}"
    run_id = tracking.start_run(client, exp_id, run_name, {k: v for k, v in tags.items() if v})
    tracking.log_params(
        client,
        run_id,
        {
            "input": params.input,
            "input.files": len(files),
            "output": str(output),
            "chunk_rows": params.chunk_rows,
        },
    )
    if ref.model_id:  # the logged model as an input of the run
        client.log_inputs(run_id, models=[LoggedModelInput(ref.model_id)])
    return ScoringRun(exp_id, run_id, _run_url(client.tracking_uri, exp_id, run_id))


@task(name="score-batch", cache_policy=NO_CACHE)
def score_batch(
    model: LoadedModel, files: list[Path], output: Path, chunk_rows: int, sample_rows: int
) -> ScoredBatch:
    """Stream the input through the model into a temporary Parquet file next to ``output``."""
    writer = scoring.AtomicParquetWriter(output)
    sample = drift.BatchSample(sample_rows)
    try:
        stats = scoring.score_stream(
            scoring.read_chunks(files, chunk_rows, model.schema, model.id_column),
            model.predict,
            model.schema,
            writer,
            id_column=model.id_column,
            constants={"model_version": model.ref.label},
            sample=sample,
            on_chunk=chunk_done,
        )
        if stats.rows == 0:
            raise DataError(f"{files[0]}: no rows to score")
        temp = writer.close()
    except BaseException:
        writer.discard()
        raise
    return ScoredBatch(temp, output, stats, sample.frame())


@task(name="check-drift", cache_policy=NO_CACHE)
def check_drift(
    model: LoadedModel, scored: ScoredBatch, settings: DriftConfig
) -> drift.DriftReport | None:
    """Compare the batch's sample with the model's reference profile, feature by feature."""
    if model.profile is None:
        get_run_logger().warning(f"{model.ref.uri} has no reference profile: no drift check")
        return None
    report = drift.compare(
        model.profile,
        scored.sample[model.profile.features],
        settings.psi_threshold,
        settings.p_value,
    )
    print(f"drift: {report.summary()}")
    return report


def _report_markdown(report: drift.DriftReport) -> str:
    rows = report.records()
    head = list(rows[0]) if rows else []
    lines = [
        f"**{report.summary()}**",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    lines += [
        "| " + " | ".join("" if v is None else str(v) for v in r.values()) + " |" for r in rows
    ]
    return "\n".join(lines)


def _png(report: drift.DriftReport) -> bytes:
    fig = figures.drift_psi(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    figures.close(fig)
    return buf.getvalue()


@task(name="log-scoring", cache_policy=NO_CACHE, **SERVER_RETRIES)
def log_scoring(
    run: ScoringRun,
    scored: ScoredBatch,
    report: drift.DriftReport | None,
    settings: DriftConfig,
    png: bytes | None,
) -> dict[str, float]:
    """Row counts, the score distribution per task, and the drift report on the scoring run."""
    client = tracking.get_client()
    s = scored.stats
    metrics = {
        "rows/scored": s.rows,
        "rows/files": s.files,
        "rows/chunks": s.chunks,
        "score/seconds": s.seconds,
        "score/rows_per_s": s.rows_per_second,
        **scoring.score_distribution(s, scored.sample),
    }
    tracking.log_params(
        client,
        run.run_id,
        {
            f"drift.{k}": v
            for k, v in settings.model_dump().items()
            if k not in ("bins", "quantiles")
        },
    )
    if report is not None:
        metrics["drift/rows_compared"] = report.rows
        metrics["drift/n_drifted"] = len(report.drifted)
        metrics["drift/flagged"] = float(report.flagged)
        for f in report.features:
            metrics[f"drift/{f.feature}/psi"] = f.psi
            metrics[f"drift/{f.feature}/p_value"] = f.p_value
        client.log_dict(run.run_id, report.to_dict(), "drift/report.json")
        client.log_text(run.run_id, _report_markdown(report), "drift/report.md")
        tracking.set_tags(
            client,
            run.run_id,
            {"drift.flagged": str(report.flagged).lower(), "drift.summary": report.summary()},
        )
    if png is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "psi.png"
            path.write_bytes(png)
            client.log_artifact(run.run_id, str(path), "drift")
    tracking.log_metrics(client, run.run_id, metrics)
    return metrics


@task(name="publish-scoring-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(
    run: ScoringRun,
    model: LoadedModel,
    scored: ScoredBatch,
    report: drift.DriftReport | None,
    png: bytes | None,
) -> None:
    """Prefect artifacts: a summary, the drift table and the drift plot."""
    ref, s = model.ref, scored.stats
    md = [
        "# Scoring run",
        f"- model: `{ref.uri}` (asked for `{ref.requested}`)",
        f"- rows scored: {s.rows:,} from {s.files} file(s), {s.rows_per_second:,.0f} rows/s",
        f"- output: `{scored.output}`",
        f"- drift: {report.summary() if report else 'not checked (no reference profile)'}",
        f"- MLflow scoring run: [{run.run_id}]({run.url})",
    ]
    create_markdown_artifact(markdown="\n".join(md), key="mtl-scoring-summary")
    if report is not None:
        create_table_artifact(
            table=report.records(), key="mtl-drift-report", description=report.summary()
        )
    if png is not None:
        # The PNG itself, as a data URL: it shows without access to the MLflow server.
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        create_image_artifact(image_url=url, key="mtl-drift-plot", description="PSI per feature")


@task(name="move-output-into-place", cache_policy=NO_CACHE)
def commit_output(scored: ScoredBatch) -> Path:
    """Rename the finished temporary file to the output name."""
    return scoring.move_into_place(scored.temp, scored.output)


@task(name="mark-scoring-failed", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def mark_failed(run: ScoringRun, error: BaseException) -> None:
    """Mark the scoring run FAILED with the error as a tag."""
    client = tracking.get_client()
    tracking.set_tags(client, run.run_id, {"error": f"{type(error).__name__}: {error}"})
    tracking.end_run(client, run.run_id, "FAILED")


# --------------------------------------------------------------------------- the flow


@flow(name="mtl-score", log_prints=True)
def mtl_score(params: ScoreParams) -> dict[str, Any]:
    """Score a batch with one version of a registered model, check it for drift, write Parquet.

    Args:
        params: The input, the output, the model (default the champion), the chunk size and
            the drift thresholds; empty thresholds keep the model's.
    """
    started = time.gmtime()
    model = load_model(params.model_uri)
    settings = drift_settings(params, model)
    output = output_path(params.output, model.ref.label, started)
    files = find_input(params.input, model)
    run = start_scoring_run(model, params, files, output)
    scored = None
    try:
        scored = score_batch(model, files, output, params.chunk_rows, settings.sample_rows)
        report = check_drift(model, scored, settings)
        png = _png(report) if report is not None else None
        log_scoring(run, scored, report, settings, png)
        publish_artifacts(run, model, scored, report, png)
        if report is not None and report.flagged and settings.fail:
            raise DriftError(f"drift: {report.summary()}; nothing written (fail_on_drift)")
        commit_output(scored)
    except BaseException as exc:
        if scored is not None:
            scored.temp.unlink(missing_ok=True)
        try:
            mark_failed(run, exc)
        except Exception as mark_exc:  # the tracking server may be the thing that failed
            get_run_logger().error(f"could not mark MLflow run {run.run_id} failed: {mark_exc}")
        raise
    tracking.end_run(tracking.get_client(), run.run_id, "FINISHED")
    return {
        "output": str(output),
        "rows": scored.stats.rows,
        "files": scored.stats.files,
        "rows_per_s": scored.stats.rows_per_second,
        "seconds": scored.stats.seconds,
        "model_uri": model.ref.uri,
        "model_version": model.ref.version,
        "alias": model.ref.alias,
        "scoring_run_id": run.run_id,
        "run_url": run.url,
        "drift_flagged": bool(report and report.flagged),
        "drifted": report.drifted if report else [],
        "drift_summary": report.summary() if report else None,
    }
