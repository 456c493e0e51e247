"""REST serving: ``mlflow models serve`` of the champion answers like ``mtl predict``.

The real scoring server runs on 127.0.0.1 on a free port, in its own process group,
against the session's tiny model (see conftest).
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from scoring_data import FEATURES, make_rows

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(scoring_model, tmp_path_factory):
    """``mlflow models serve -m models:/<name>@champion --env-manager local``, until the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **os.environ,
        **scoring_model.env(),
        # MLflow starts uvicorn by name, from the environment the model runs in.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", scoring_model.champion]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the scoring server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def invoke(url: str, rows: pd.DataFrame) -> requests.Response:
    """POST rows as ``dataframe_split``; NaN and infinity go as JSON's NaN and Infinity."""
    body = json.dumps({"dataframe_split": rows.to_dict(orient="split", index=False)})
    headers = {"Content-Type": "application/json"}
    return requests.post(f"{url}/invocations", data=body, headers=headers, timeout=60)


def test_rest_answers_like_mtl_predict(server, scoring_model, tmp_path):
    rows = make_rows(25, seed=7)[FEATURES]
    rows.loc[3, "x2"] = np.nan  # a missing value is imputed, not refused
    resp = invoke(server, rows)
    assert resp.status_code == 200, resp.text
    served = pd.DataFrame(resp.json()["predictions"])

    rows.to_csv(tmp_path / "rows.csv", index=False)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "predict",
            "--model-uri",
            scoring_model.champion,
            "--input",
            str(tmp_path / "rows.csv"),
            "--output",
            str(tmp_path / "preds.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **scoring_model.env()},
    )
    assert proc.returncode == 0, proc.stderr
    predicted = pd.read_csv(tmp_path / "preds.csv")
    assert list(served.columns) == list(predicted.columns) == ["reg", "cls", "cls_proba"]
    np.testing.assert_allclose(served["reg"], predicted["reg"], rtol=1e-5)
    np.testing.assert_allclose(served["cls_proba"], predicted["cls_proba"], rtol=1e-6)
    assert served["cls"].tolist() == predicted["cls"].tolist()


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            lambda r: r.assign(x4=[1.0, math.inf]),
            ["column 'x4'", "infinite value in 1 row (first: row 1"],
        ),
        (lambda r: r.assign(x1=["0.3", "abc"]), ["x1", "could not convert string to float"]),
        (lambda r: r.drop(columns=["x5"]), ["missing inputs ['x5']"]),
    ],
    ids=["infinite", "text-in-number", "missing-column"],
)
def test_bad_rows_get_400_with_a_message(server, change, fragments):
    rows = change(make_rows(2, seed=8)[FEATURES])
    resp = invoke(server, rows)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
