"""Run many ``mtl`` commands as forked children of one warm interpreter (a test helper).

Starting Python and importing torch, scikit-learn and MLflow takes 5 to 15 s on a
busy 2-core machine, which would make every bad-input case of the CLI as slow.
This script imports them once, then forks one child process per case; the child
sets the case's environment (its own ``MTL_STATE_DIR`` among it), re-applies the
embedded defaults that ``import flows`` applied in the parent, redirects its
stdout and stderr to files, runs ``flows.cli.main(argv)`` and exits with its
status. Each child is a separate process, so whatever a case writes or leaks
stays with it. Prefect is not imported here: a case that wrongly got past the
pre-flight checks would import and start it itself.

Usage: ``python cli_batch.py CASES.json RESULTS.json``. CASES is a list of
``{"id", "argv", "env", "dir"}``; RESULTS becomes ``{id: {"rc", "seconds"}}``, and
each child's output is in ``dir/stdout`` and ``dir/stderr``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

CASE_TIMEOUT = 90  # seconds; a case that starts a flow run is killed, and fails its test
CLEARED = ("MLFLOW_TRACKING_URI", "MTL_OPTUNA_STORAGE", "PREFECT_API_URL", "PREFECT_HOME")


def _warm() -> None:
    """Import what the command imports lazily, so that each child starts warm."""
    import httpx  # noqa: F401
    import mlflow.pyfunc  # noqa: F401
    import mlflow.utils.validation  # noqa: F401
    import sqlalchemy  # noqa: F401

    import flows.cli  # noqa: F401
    import flows.deploy  # noqa: F401
    import flows.preflight  # noqa: F401
    import mtl_core.data  # noqa: F401
    import mtl_core.integrations.search  # noqa: F401
    import mtl_core.integrations.tracking  # noqa: F401


def _child(case: dict) -> int:
    folder = Path(case["dir"])
    for name, fd in (("stdout", 1), ("stderr", 2)):
        target = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    for key in CLEARED:
        os.environ.pop(key, None)
    os.environ.update(case["env"])
    from flows.cli import main
    from flows.settings import configure_environment

    configure_environment()
    try:
        return main(case["argv"])
    except SystemExit as exc:  # argparse
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1


def run(cases: list[dict]) -> dict:
    """Fork a child per case, one after another; returns exit statuses and durations."""
    _warm()
    results = {}
    for case in cases:
        sys.stdout.flush()
        sys.stderr.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                rc = _child(case)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - start > CASE_TIMEOUT:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                rc = -9
                break
            time.sleep(0.02)
        results[case["id"]] = {"rc": rc, "seconds": round(time.monotonic() - start, 2)}
    return results


if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run(cases)))
