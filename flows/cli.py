"""The ``mtl`` command: run the pipeline, score files with a registered model, deploy.

Bad input (a config error, a missing file, a model URI that does not exist)
prints one line ``mtl: error: ...`` and exits with status 2, without a traceback.
``mtl score --fail-on-drift`` exits with status 3 when the batch drifted.
SIGTERM or Ctrl-C stop ``mtl run`` with everything it started (the temporary
Prefect API, search workers) and exit with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
from pathlib import Path

import flows  # noqa: F401  (embedded defaults first)
from flows import shutdown
from mtl_core.errors import MTLError

EXIT_USAGE = 2
EXIT_DRIFT = 3


def _fail(message: str) -> int:
    print(f"mtl: error: {message}", file=sys.stderr)
    return EXIT_USAGE


class _QuietExpectedErrors(logging.Filter):
    """Drop tracebacks of expected errors from Prefect's logs; the message stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], MTLError):
            record.exc_info, record.exc_text = None, None
        return True


def _start_local_api() -> None:
    """Start the temporary Prefect API now, one process at a time per state folder.

    Two runs starting at once on a fresh state folder would otherwise both create
    Prefect's database. Nothing happens when a Prefect server is configured.
    """
    from filelock import FileLock
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from mtl_core.config import state_dir

    if PREFECT_API_URL.value():
        return
    (state_dir() / "locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(state_dir() / "locks" / "prefect-api.lock"))
    with lock, get_client(sync_client=True) as client:  # starts it; it stops when we exit
        client.api_healthcheck()


def cmd_run(args: argparse.Namespace) -> int:
    """Check config, data, device and servers up front, then run the ``mtl-pipeline`` flow.

    ``--config`` may be a file path here: the command resolves and validates it and
    passes it on with :meth:`~flows.params.PipelineParams.local`, a route the
    dashboard does not have (see :mod:`flows.params`).
    """
    shutdown.raise_on_sigterm()
    # Registered before Prefect is imported, so it runs last at exit, after Prefect has
    # flushed its logs and stopped its temporary API: a child process still alive then
    # (a server whose stop was cut short, search workers) was started by this command.
    atexit.register(shutdown.stop_children)
    from pydantic import ValidationError

    from flows.params import PipelineParams, params_error
    from flows.preflight import check_run, move_secret_storage
    from mtl_core.config import load_config, resolve_config_path
    from mtl_core.integrations import tracking

    overrides = move_secret_storage(args.set or [])  # no password in the flow's parameters
    resolve_config_path(args.config)  # a missing file is one line, before anything else
    try:
        params = PipelineParams.local(args.config, overrides=overrides)
    except ValidationError as exc:
        raise params_error(exc, "mtl run") from None
    cfg = load_config(params.config, params.config_overrides())
    if cfg.search.executor == "pool":  # first: without a server, nothing else matters
        from flows.pool import check_pool_mode

        check_pool_mode(cfg)
    check_run(cfg)  # data, device, names and servers: before any run, study or store exists

    from prefect.exceptions import TerminationSignal

    from flows.pipeline import mtl_pipeline

    quiet = _QuietExpectedErrors()
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect"):
        logging.getLogger(name).addFilter(quiet)
    _start_local_api()
    try:
        result = mtl_pipeline(params)
    except TerminationSignal as exc:  # Prefect's own, should it not re-send the signal
        raise shutdown.Terminated(exc.signal) from exc
    print()
    print(f"promotion:      {result['promotion']}")
    print(f"delta_m (test): {result['delta_m']:+.2f}%" if result["delta_m"] is not None else "")
    print(f"MLflow run:     {result['run_url']}")
    print(f"champion model: {result['champion_uri']}")
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:"):
        print(
            f"open the MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        )
    else:
        print(f"MLflow UI: {uri}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Score a CSV or Parquet file with a registered (or any) MLflow model URI."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from flows.preflight import writable_place
    from mtl_core.data import read_table
    from mtl_core.integrations import tracking

    out = Path(args.output)
    if why := writable_place(out):
        return _fail(f"--output {out}: cannot write a CSV file there ({why})")
    rows = read_table(args.input)
    if args.model_uri.startswith(("models:/", "runs:/")):  # a local model folder needs no store
        uri = tracking.tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            return _fail(
                f"model '{args.model_uri}': no MLflow store at {uri}; run 'mtl run' first "
                "or set MLFLOW_TRACKING_URI"
            )
        tracking.get_client()
    try:
        model = mlflow.pyfunc.load_model(args.model_uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(f"model '{args.model_uri}': cannot load ({first})")
    # The model's signature declares numeric features as double, so that rows with missing
    # values are accepted; MLflow will not cast int64 to double by itself.
    ints = [c for c in rows.columns if pd.api.types.is_integer_dtype(rows[c])]
    rows = rows.astype(dict.fromkeys(ints, "float64"))
    try:
        preds = model.predict(rows)
    except MlflowException as exc:
        reason = str(exc).rsplit("Error: ", 1)[-1].strip().splitlines()[0]
        return _fail(f"{args.input}: rows do not match the model's input schema ({reason})")
    except MTLError as exc:  # the model's own checks, e.g. inf in a feature
        return _fail(f"{args.input}: {str(exc).removeprefix('model input: ')}")
    partial = out.with_name(f".{out.name}.partial")
    try:  # all or nothing: a failed write leaves no half-written file
        out.parent.mkdir(parents=True, exist_ok=True)
        preds.to_csv(partial, index=False)
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        return _fail(f"--output {out}: cannot write ({exc.strerror})")
    print(f"wrote {len(preds)} predictions ({', '.join(preds.columns)}) to {out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score files with one version of a registered model: the ``mtl-score`` flow."""
    import time

    from pydantic import ValidationError

    from flows.params import ScoreParams
    from mtl_core import scoring
    from mtl_core.config import load_config
    from mtl_core.errors import DriftError
    from mtl_core.integrations import models, tracking

    model_uri = args.model_uri or (
        f"models:/{load_config(args.config).tracking.registered_model}@champion"
    )
    try:
        params = ScoreParams(
            input=args.input,
            output=args.output,
            model_uri=model_uri,
            chunk_rows=args.chunk_rows,
            experiment=args.experiment,
            psi_threshold=args.psi_threshold,
            p_value=args.p_value,
            fail_on_drift=True if args.fail_on_drift else None,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        return _fail(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}")
    # Everything checkable is checked before a run exists: the input, the store, the model,
    # and the input's columns against the model's signature.
    files = scoring.input_files(params.input)
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return _fail(
            f"model '{model_uri}': no MLflow store at {uri}; run 'mtl run' first "
            "or set MLFLOW_TRACKING_URI"
        )
    ref = models.resolve(tracking.get_client(), model_uri)
    schema, id_column = models.describe(ref)
    scoring.check_input(files, schema, id_column)

    from flows.score import mtl_score, output_path

    output_path(params.output, ref.label, time.gmtime())  # a bad name fails before the run

    quiet = _QuietExpectedErrors()
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect"):
        logging.getLogger(name).addFilter(quiet)
    try:
        result = mtl_score(params)
    except DriftError as exc:
        print(f"mtl: error: {exc}", file=sys.stderr)
        return EXIT_DRIFT
    alias = f" (alias {result['alias']})" if result["alias"] else ""
    print()
    print(
        f"scored:      {result['rows']:,} rows from {result['files']} file(s) with "
        f"{result['model_uri']}{alias}, {result['rows_per_s']:,.0f} rows/s"
    )
    print(f"predictions: {result['output']}")
    print(f"drift:       {result['drift_summary'] or 'not checked (no reference profile)'}")
    print(f"MLflow run:  {result['run_url']}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Create or update the scheduled ``mtl-pipeline`` deployment on a process work pool."""
    from flows.deploy import NIGHTLY, SCORING, WEEKLY, SchedulePlan, deploy, deploy_scoring

    nightly = SchedulePlan(
        "nightly", args.nightly, {**NIGHTLY.changes, "n_trials": args.nightly_trials}
    )
    weekly = SchedulePlan(
        "weekly",
        args.weekly,
        {**WEEKLY.changes, "n_trials": args.weekly_trials, "n_workers": args.weekly_workers},
    )
    out = deploy(
        args.config,
        name=args.name,
        work_pool=args.pool,
        overrides=args.set or [],
        schedules=(nightly, weekly),
        timezone=args.timezone,
        paused=args.paused,
        concurrency_limit=args.limit or None,
    )
    print(f"deployment {out.name} ({out.id}) on work pool '{out.work_pool}'")
    for slug, (cron, params) in out.schedules.items():
        changed = {k: v for k, v in params.items() if v != out.parameters.get(k)}
        print(f"  {slug:<8} {cron} ({args.timezone}) {changed}")
    print(
        f"run by hand: prefect deployment run '{out.name}'"
        + (f", or Run at {out.url}" if out.url else "")
    )
    print(
        f"deployment {out.worker} on work pool '{out.work_pool}': search workers of "
        "runs with search.executor=pool"
    )
    scoring = deploy_scoring(
        args.config,
        name=args.name,
        work_pool=args.pool,
        input=args.score_input,
        output=args.score_output,
        cron=args.score_cron,
        timezone=args.timezone,
        paused=args.paused,
        concurrency_limit=args.limit or None,
    )
    params = scoring.parameters
    state = "active" if args.score_input else "inactive until --score-input is given"
    print(f"deployment {scoring.name} ({scoring.id}) on work pool '{scoring.work_pool}'")
    print(f"  {SCORING.slug:<8} {args.score_cron} ({args.timezone}) {state}")
    print(f"  scores {params['input']} with {params['model_uri']} into {params['output']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mtl`` argument parser."""
    parser = argparse.ArgumentParser(prog="mtl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the mtl-pipeline flow")
    run.add_argument("--config", default="default", help="config name in configs/ or YAML path")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set search.n_trials=5 (repeatable)",
    )
    run.set_defaults(func=cmd_run)
    pred = sub.add_parser("predict", help="score rows with a registered model")
    pred.add_argument("--model-uri", required=True, help="e.g. models:/mtl-default@champion")
    pred.add_argument("--input", required=True, help="CSV or Parquet file of raw feature rows")
    pred.add_argument("--output", required=True, help="CSV file to write")
    pred.set_defaults(func=cmd_predict)
    score = sub.add_parser(
        "score", help="score files with the champion (the mtl-score flow), checking drift"
    )
    score.add_argument(
        "--input", required=True, help="CSV or Parquet file, a folder of them, or a glob"
    )
    score.add_argument(
        "--output",
        required=True,
        help="Parquet file to write ({date}, {time}, {version} are filled in)",
    )
    score.add_argument("--model-uri", help="default: models:/<the config's model name>@champion")
    score.add_argument(
        "--config", default="default", help="config whose model to use (default: %(default)s)"
    )
    score.add_argument(
        "--chunk-rows",
        type=int,
        default=100_000,
        metavar="N",
        help="rows read and scored at a time (default: %(default)s)",
    )
    score.add_argument("--experiment", help="MLflow experiment of the scoring run")
    score.add_argument(
        "--psi-threshold", type=float, metavar="X", help="drift threshold (default: the model's)"
    )
    score.add_argument(
        "--p-value", type=float, metavar="X", help="drift test level (default: the model's)"
    )
    score.add_argument(
        "--fail-on-drift",
        action="store_true",
        help="exit 3 and write nothing when drift is flagged",
    )
    score.set_defaults(func=cmd_score)
    from flows.deploy import NIGHTLY, SCORING, WEEKLY  # light: no torch, no Prefect

    dep = sub.add_parser(
        "deploy", help="deploy training (nightly, weekly) and scoring (daily) on a work pool"
    )
    dep.add_argument(
        "--config", default="default", help="config name in configs/ (or the path of a file there)"
    )
    dep.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override stored in the deployment (repeatable)",
    )
    dep.add_argument("--name", help="deployment name (default: the config's file stem)")
    dep.add_argument("--pool", help="process work pool (default: $MTL_WORK_POOL or mtl-process)")
    dep.add_argument(
        "--nightly",
        default=NIGHTLY.cron,
        metavar="CRON",
        help="cron of the small search (default: %(default)s)",
    )
    dep.add_argument(
        "--nightly-trials",
        type=int,
        default=NIGHTLY.changes["n_trials"],
        metavar="N",
        help="trials of the nightly search (default: %(default)s)",
    )
    dep.add_argument(
        "--weekly",
        default=WEEKLY.cron,
        metavar="CRON",
        help="cron of the larger search (default: %(default)s)",
    )
    dep.add_argument(
        "--weekly-trials",
        type=int,
        default=WEEKLY.changes["n_trials"],
        metavar="N",
        help="trials of the weekly search (default: %(default)s)",
    )
    dep.add_argument(
        "--weekly-workers",
        type=int,
        default=WEEKLY.changes["n_workers"],
        metavar="N",
        help="search workers of the weekly run (default: %(default)s)",
    )
    dep.add_argument("--timezone", default="UTC", help="time zone of the crons (default: UTC)")
    dep.add_argument(
        "--limit",
        type=int,
        default=1,
        metavar="N",
        help="runs of the deployment at once, 0 = no limit (default: %(default)s)",
    )
    dep.add_argument(
        "--score-cron",
        default=SCORING.cron,
        metavar="CRON",
        help="cron of the scoring deployment (default: %(default)s)",
    )
    dep.add_argument(
        "--score-input",
        metavar="PATH",
        help="file, folder or glob the scoring schedule scores (without it: schedule inactive)",
    )
    dep.add_argument(
        "--score-output",
        metavar="PATH",
        help="Parquet file the scoring schedule writes (default: "
        ".state/scores/{date}-v{version}.parquet)",
    )
    dep.add_argument("--paused", action="store_true", help="create it with schedules paused")
    dep.set_defaults(func=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mtl`` console script."""
    args = build_parser().parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the console to our lines
    try:
        return args.func(args)
    except MTLError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("mtl: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except shutdown.Terminated as exc:
        print(f"mtl: {exc}", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
