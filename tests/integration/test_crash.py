"""No debris after a crash: what a killed ``mtl run`` leaves is closed by the next run.

``mtl run`` runs as a subprocess on a state folder of its own. SIGKILL is injected
at a chosen point by ``mtl_with_faults.py`` (a patched function in that process
only); SIGTERM is sent from outside, as a scheduler or ``kill`` would.
"""

import re
import signal
import socket
import time

import pytest
from crash_helpers import (
    mlflow_client,
    overrides,
    process_group,
    run_mtl,
    runs_of,
    start_mtl,
    study_of,
)

from mtl_core.integrations import search, tracking

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_runs_after_kills_close_what_the_dead_left(prefect_harness, tmp_path):
    """Killed in a trial, then killed between registering and promoting, then recovered."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api, state, args = PREFECT_API_URL.value(), tmp_path / "state", overrides("crash")

    killed = run_mtl(state, args, "kill-in-trial:1", api)
    assert killed.returncode == -signal.SIGKILL, killed.output
    assert "fault: SIGKILL in trial 1, epoch 2" in killed.output
    study = study_of(state, "crash")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]  # the debris

    second = run_mtl(state, args, "kill-after-register", api)
    assert second.returncode == -signal.SIGKILL, second.output
    assert (
        "closed what dead processes left: 1 parent run, 1 trial run, 1 trial, 1 flow run"
        in second.output
    )
    assert "fault: SIGKILL after registering version 1" in second.output

    third = run_mtl(state, args, "none", api)
    assert third.returncode == 0, third.output
    assert (
        "closed what dead processes left: 1 parent run, 1 model version, 1 flow run" in third.output
    )
    assert "first champion" not in third.output

    # The study holds exactly n_trials trials that ran to an outcome, plus the stale one.
    study = study_of(state, "crash")
    assert search.finished_trials(study) == 4
    states = [t.state.name for t in study.trials]
    assert len(states) == 5 and states[1] == "FAIL"
    assert all(s in ("COMPLETE", "PRUNED") for i, s in enumerate(states) if i != 1)
    assert study.trials[1].user_attrs["fail_reason"] == (
        f"stale: process {killed.pid} on host {socket.gethostname()} "
        "ended without finishing the trial"
    )

    # No MLflow run is left RUNNING; the dead ones say why they were closed.
    client = mlflow_client(state)
    runs = runs_of(client, "crash")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = sorted(
        (r for r in runs if tracking.PARENT_TAG not in r.data.tags),
        key=lambda r: r.info.start_time,
    )
    assert [p.info.status for p in parents] == ["FAILED", "FAILED", "FINISHED"]
    for parent, proc in zip(parents[:2], (killed, second), strict=True):
        assert parent.data.tags[tracking.OWNER_TAG + "pid"] == str(proc.pid)
        assert f"process {proc.pid} on host" in parent.data.tags[tracking.CLOSED_TAG]
    (trial_1,) = [
        r
        for r in runs
        if r.data.tags.get(tracking.PARENT_TAG) == parents[0].info.run_id
        and r.info.run_name == "trial-001"
    ]
    assert trial_1.info.status == "FAILED"
    assert trial_1.data.tags["trial.state"] == "INTERRUPTED"

    # The version registered by the killed run is an orphan; the alias state is consistent.
    model = client.get_registered_model("crash")
    assert {a: str(v) for a, v in model.aliases.items()} == {"champion": "2"}
    orphan, champion = (client.get_model_version("crash", v) for v in ("1", "2"))
    assert orphan.tags[tracking.PROMOTION_TAG] == "orphaned"
    assert parents[1].info.run_id in orphan.tags["promotion.reason"]
    assert champion.tags[tracking.PROMOTION_TAG] == "champion"
    assert (
        parents[2]
        .data.tags["promotion.summary"]
        .startswith("version 2 becomes champion (test objective ")
    )
    assert (
        parents[2]
        .data.tags["promotion.summary"]
        .endswith("none of the 1 earlier version(s) held the alias")
    )

    # The killed runs' Prefect flow runs are CRASHED, with a message naming the process.
    with get_client(sync_client=True) as prefect:
        flow_runs = [prefect.read_flow_run(p.data.tags["prefect.flow_run_id"]) for p in parents]
    assert [f.state.type.value for f in flow_runs] == ["CRASHED", "CRASHED", "COMPLETED"]
    for flow_run, proc in zip(flow_runs[:2], (killed, second), strict=True):
        assert f"process {proc.pid} on host" in flow_run.state.message


def test_sigterm_stops_the_run_and_everything_it_started(tmp_path):
    """SIGTERM mid-search with two workers: nothing survives, nothing stays RUNNING."""
    state = tmp_path / "state"
    # Long trials (no pruning, no early stop), so the signal lands inside them.
    args = overrides(
        "sigterm",
        "search.n_workers=2",
        "search.n_trials=6",
        "search.pruner=none",
        "train.epochs=300",
        "train.patience=1000",
    )
    log_path = tmp_path / "mtl.log"
    with open(log_path, "w") as log:
        proc = start_mtl(state, args, log=log)
        try:

            def both_workers_training():  # each trial has its MLflow run once it trains
                if not (state / "optuna-journal.log").exists():
                    return None
                trials = study_of(state, "sigterm", journal=True).trials
                training = [
                    t for t in trials if t.state.name == "RUNNING" and t.intermediate_values
                ]
                return len(training) >= 2

            wait_until(both_workers_training, 240, "two trials in training")
            port = int(
                re.search(r"temporary server on http://127\.0\.0\.1:(\d+)", log_path.read_text())[1]
            )
            assert len(process_group(proc.pid)) >= 4  # mtl, the API server, two workers
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=90) == 128 + signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log_path.read_text()
    assert "mtl: stopped by SIGTERM" in output

    # No process of its tree is alive (multiprocessing's tracker exits right after it).
    wait_until(lambda: not process_group(proc.pid), 20, "the process group to end")
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listens"

    client = mlflow_client(state)
    runs = runs_of(client, "sigterm")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["error"] == "interrupted by SIGTERM"
    stopped = [r for r in runs if r.data.tags.get("trial.state") == "INTERRUPTED"]
    assert len(stopped) == 2 and {r.info.status for r in stopped} == {"KILLED"}

    trials = study_of(state, "sigterm", journal=True).trials
    assert not [t.number for t in trials if t.state.name == "RUNNING"]
    interrupted = [t for t in trials if "interrupted" in t.user_attrs]
    assert len(interrupted) == 2
    assert {t.user_attrs["fail_reason"] for t in interrupted} == {"interrupted by SIGTERM"}
