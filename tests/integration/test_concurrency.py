"""Two ``mtl run`` of one experiment at once, on the embedded defaults of one state folder.

Both share the SQLite stores (MLflow, Optuna) and Prefect's home; each starts its
own temporary Prefect API. ``mtl_with_faults.py`` makes them meet before the
search, so that the searches overlap, and after registering, so that the
promotions would overlap if nothing serialised them.
"""

import contextlib

import pytest
from crash_helpers import mlflow_client, overrides, runs_of, start_mtl, study_of

from mtl_core.integrations import search, tracking

pytestmark = pytest.mark.integration


def test_two_runs_at_once_share_one_study(tmp_path):
    state = tmp_path / "state"
    args = overrides("together", "search.n_trials=6")
    fault = f"meet:{tmp_path / 'meet'}:2"
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    procs = []
    with contextlib.ExitStack() as files:
        try:
            for log in logs:
                procs.append(start_mtl(state, args, fault, log=files.enter_context(open(log, "w"))))
            codes = [p.wait(timeout=420) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs

    # The study holds exactly n_trials trials, every one at a different point.
    study = study_of(state, "together")
    assert len(study.trials) == 6 and search.finished_trials(study) == 6
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(points)) == 6, points
    owners = {t.user_attrs["owner"]["pid"] for t in study.trials}
    assert owners == {str(p.pid) for p in procs}, "both runs searched"

    # Promotions were serialised: the second one compared with the first one's version.
    client = mlflow_client(state)
    runs = runs_of(client, "together")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    summaries = sorted(
        r.data.tags["promotion.summary"] for r in runs if tracking.PARENT_TAG not in r.data.tags
    )
    assert len(summaries) == 2
    # One found no champion (the other's version may exist, registered, not yet promoted) ...
    became = [s for s in summaries if "champion version" not in s]
    assert len(became) == 1, summaries
    # ... and the other compared with it, instead of also finding none.
    first = became[0].split()[1]
    (compared,) = [s for s in summaries if s is not became[0]]
    assert f"champion version {first} " in compared, summaries

    # Exactly one version holds champion: the better of the two, by test objective.
    versions = {v.version: v for v in client.search_model_versions("name = 'together'")}
    assert len(versions) == 2
    scores = {str(n): float(v.tags[tracking.SCORE_TAG]) for n, v in versions.items()}
    aliases = {a: str(v) for a, v in client.get_registered_model("together").aliases.items()}
    assert scores[aliases["champion"]] == min(scores.values())  # a tie keeps the first
    assert {v.tags[tracking.PROMOTION_TAG] for v in versions.values()} <= {"champion", "challenger"}
