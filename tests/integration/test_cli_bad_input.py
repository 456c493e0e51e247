"""Bad input to ``mtl``: exit status 2, one line naming what is wrong, and nothing written.

Every case runs the real command in a process of its own with its own state
folder, and must fail in the pre-flight checks, before Prefect starts: no
Prefect database, no MLflow store, no Optuna study, no output file. The cases
run as forked children of one warm interpreter (see ``cli_batch.py``), so each
takes about a second instead of the 10 s of a cold start here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SECRET = "hunter2"
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


@dataclass
class Case:
    """One command line; ``{data}`` in it is the folder of the data files."""

    id: str
    argv: list[str]
    fragments: list[str]
    env: dict[str, str] = field(default_factory=dict)


def run_case(case_id: str, config: str, *sets: str, **kw) -> Case:
    argv = ["run", "--config", config]
    for item in sets:
        argv += ["--set", item]
    return Case(case_id, argv, **kw)


def _frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": rng.normal(size=n),
            "c": rng.choice(["a", "b"], size=n),
            "y": (x1 > 0).astype(int),
            "r": 2 * x1 + rng.normal(scale=0.1, size=n),
        }
    )


def _write_data(folder: Path) -> None:
    """The data files of the cases, and a config per file."""
    good = _frame()
    good.to_csv(folder / "good.csv", index=False)
    (folder / "dup.csv").write_text(
        "x1,y,y\n" + "".join(f"{a},{b},{b}\n" for a, b in zip(good.x1, good.y, strict=True))
    )
    strays = good.astype({"x1": object})
    strays.loc[[4, 9], "x1"] = "oops"
    strays.to_csv(folder / "strays.csv", index=False)
    good.assign(x1=good.x1.where(good.index != 5, np.inf)).to_csv(folder / "inf.csv", index=False)
    good.assign(r=good.r.where(good.index % 20 != 0, 1e308)).to_csv(
        folder / "huge.csv", index=False
    )
    (folder / "semicolon.csv").write_text(good.to_csv(index=False, sep=";"))
    (folder / "header_only.csv").write_text("x1,x2,c,y,r\n")
    good.head(1).to_csv(folder / "one_row.csv", index=False)
    good.assign(z=np.nan).to_csv(folder / "all_missing.csv", index=False)
    good.assign(y=1).to_csv(folder / "one_class.csv", index=False)
    good.assign(y=np.arange(len(good)) % 3).to_csv(folder / "three_class.csv", index=False)
    text = good.astype({"r": object})
    text.loc[3, "r"] = "broken sensor"
    text.to_csv(folder / "text_target.csv", index=False)
    tasks = {
        "all_missing": [
            {"name": "t", "column": "y", "type": "binary"},
            {"name": "z", "column": "z", "type": "regression"},
        ],
        "text_target": [{"name": "t", "column": "r", "type": "regression"}],
        "huge": [{"name": "t", "column": "r", "type": "regression"}],
    }
    for csv in folder.glob("*.csv"):
        raw = {
            "data": {
                "source": "file",
                "path": str(csv),
                "tasks": tasks.get(csv.stem, [{"name": "t", "column": "y", "type": "binary"}]),
            },
            "model": {"hidden": [4]},
            "train": {"epochs": 1, "device": "cpu"},
            "search": {"n_trials": 1},
            "tracking": {"experiment": "bad-input"},
            "baselines": False,
        }
        (folder / f"{csv.stem}.yaml").write_text(yaml.safe_dump(raw))
    bomb = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (folder / "bomb.yaml").write_text((folder / "good.yaml").read_text() + "\n".join(bomb))
    (folder / "rows_header_only.csv").write_text("x1,x2,c\n")
    (folder / "rows_inf.csv").write_text("x1,x2,c\n0.5,1.0,a\n0.1,-inf,b\n")
    (folder / "rows.csv").write_text("x1,x2,c\n0.5,1.0,a\n")
    (folder / "an_output_folder").mkdir()


D = "{data}"
CASES = [
    # Wrong results from bad data.
    run_case("duplicate-column", f"{D}/dup.yaml", fragments=["dup.csv", "['y']", "more than once"]),
    run_case(
        "numeric-with-strays",
        f"{D}/strays.yaml",
        fragments=["strays.csv", "'x1'", "'oops'", "2 of 60 values (3.3%)", "coerce_numeric"],
    ),
    run_case("inf-in-a-feature", f"{D}/inf.yaml", fragments=["inf.csv", "'x1' (1 row)", "inf"]),
    run_case("huge-target", f"{D}/huge.yaml", fragments=["huge.csv", "'r' (3 rows)", "±3.4e38"]),
    # Data content.
    run_case("semicolon-csv", f"{D}/semicolon.yaml", fragments=["semicolon.csv", "';'-separated"]),
    run_case("header-only", f"{D}/header_only.yaml", fragments=["header_only.csv", "no data rows"]),
    run_case("one-row", f"{D}/one_row.yaml", fragments=["one_row.csv", "only 1 usable rows"]),
    run_case(
        "all-missing-task",
        f"{D}/all_missing.yaml",
        fragments=["all_missing.csv", "'z'", "no labels"],
    ),
    run_case("single-class", f"{D}/one_class.yaml", fragments=["'y'", "1 class(es)"]),
    run_case("three-class-binary", f"{D}/three_class.yaml", fragments=["'y'", "'multiclass'"]),
    run_case(
        "text-regression-target",
        f"{D}/text_target.yaml",
        fragments=["'r'", "must be numeric", "'broken sensor'"],
    ),
    run_case(
        "missing-feature",
        f"{D}/good.yaml",
        "data.features=[x1, nope]",
        fragments=["good.csv", "'nope'", "not found"],
    ),
    # Settings.
    run_case(
        "unknown-device", f"{D}/good.yaml", "train.device=tpu", fragments=["train.device", "'tpu'"]
    ),
    run_case(
        "missing-cuda-device",
        f"{D}/good.yaml",
        "train.device=cuda:99",
        fragments=["train.device", "'cuda:99' does not exist"],
    ),
    run_case(
        "model-name-mlflow-refuses",
        f"{D}/good.yaml",
        "tracking.experiment=team/churn",
        fragments=["tracking.experiment", "'team/churn'", "tracking.model_name"],
    ),
    run_case(
        "tracking-server-unreachable",
        f"{D}/good.yaml",
        env={"MLFLOW_TRACKING_URI": DEAD},
        fragments=["MLFLOW_TRACKING_URI", "127.0.0.1:9", "not reachable"],
    ),
    run_case(
        "storage-unknown-driver",
        f"{D}/good.yaml",
        f"search.storage=nodriver://mtl:{SECRET}@db/optuna",
        fragments=["nodriver://mtl:***@db/optuna", "unknown database driver 'nodriver'"],
    ),
    run_case(
        "storage-unknown-host",
        f"{D}/good.yaml",
        "search.storage=postgresql+psycopg2://mtl@no-such-host.invalid/optuna",
        fragments=["search.storage", "no-such-host.invalid", "cannot connect"],
    ),
    run_case(
        "storage-connection-refused",
        f"{D}/good.yaml",
        env={"MTL_OPTUNA_STORAGE": f"postgresql+psycopg2://mtl:{SECRET}@127.0.0.1:9/optuna"},
        fragments=["MTL_OPTUNA_STORAGE", "mtl:***@127.0.0.1:9", "cannot connect"],
    ),
    run_case(
        "journal-under-a-file",
        f"{D}/good.yaml",
        f"search.storage={D}/good.csv/study.log",
        fragments=["search.storage", "good.csv is not a folder"],
    ),
    run_case(
        "prefect-api-unreachable",
        f"{D}/good.yaml",
        env={"PREFECT_API_URL": f"{DEAD}/api"},
        fragments=["PREFECT_API_URL", "not reachable"],
    ),
    run_case(
        "split-fractions",
        f"{D}/good.yaml",
        "data.val_fraction=0.49",
        "data.test_fraction=0.49",
        fragments=["data.val_fraction (0.49)", "data.test_fraction (0.49)"],
    ),
    run_case(
        "duplicate-features",
        f"{D}/good.yaml",
        "data.features=[x1, x2, x1]",
        fragments=["data.features lists ['x1'] more than once"],
    ),
    run_case(
        "boolean-trials",
        "default",
        "search.n_trials=true",
        fragments=["search.n_trials", "boolean"],
    ),
    run_case("alias-bomb", f"{D}/bomb.yaml", fragments=["bomb.yaml", "aliases expand"]),
    # mtl predict.
    Case(
        "predict-header-only",
        ["predict", "--model-uri", "{model}", "--input", f"{D}/rows_header_only.csv"],
        ["rows_header_only.csv", "no data rows"],
    ),
    Case(
        "predict-inf-in-a-feature",
        ["predict", "--model-uri", "{model}", "--input", f"{D}/rows_inf.csv"],
        ["rows_inf.csv", "'x2'", "in 1 row", "inf"],
    ),
    Case(
        "predict-output-is-a-folder",
        [
            "predict",
            "--model-uri",
            "{model}",
            "--input",
            f"{D}/rows.csv",
            "--output",
            f"{D}/an_output_folder",
        ],
        ["--output", "an_output_folder", "is a folder"],
    ),
    Case(
        "predict-output-under-a-file",
        [
            "predict",
            "--model-uri",
            "{model}",
            "--input",
            f"{D}/rows.csv",
            "--output",
            f"{D}/rows.csv/p.csv",
        ],
        ["--output", "rows.csv is not a folder"],
    ),
    # mtl deploy.
    Case(
        "deploy-password-in-overrides",
        ["deploy", "--set", f"search.storage=postgresql://mtl:{SECRET}@db/optuna"],
        ["parameter 'overrides'", "MTL_OPTUNA_STORAGE on the worker"],
        env={"PREFECT_API_URL": f"{DEAD}/api"},
    ),
    Case(
        "deploy-config-outside-configs",
        ["deploy", "--config", f"{D}/good.yaml"],
        ["good.yaml", "configs/"],
        env={"PREFECT_API_URL": f"{DEAD}/api"},
    ),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A pyfunc model folder trained for one epoch on x1, x2, c -> y."""
    from mtl_core.config import validate_config
    from mtl_core.data import prepare
    from mtl_core.integrations.serving import save_pyfunc
    from mtl_core.train import train_from_config

    folder = tmp_path_factory.mktemp("model-data")
    _frame(120).drop(columns="r").to_csv(folder / "train.csv", index=False)
    cfg = validate_config(
        {
            "data": {
                "source": "file",
                "path": str(folder / "train.csv"),
                "tasks": [{"name": "t", "column": "y", "type": "binary"}],
            },
            "model": {"hidden": [4]},
            "train": {"epochs": 1, "device": "cpu"},
        }
    )
    data = prepare(cfg.data, cfg.features)
    net, _ = train_from_config(cfg, data)
    path = folder / "model"
    save_pyfunc(path, net.cpu(), data.preprocessor, data.splits["test"].rows.head(3))
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory, model_dir) -> dict:
    """Every case, run once: ``{id: (rc, stdout, stderr, its folder, its seconds)}``."""
    root = tmp_path_factory.mktemp("cli-bad-input")
    data = root / "data"
    data.mkdir()
    _write_data(data)
    specs = []
    for case in CASES:
        folder = root / case.id
        (folder / "state").mkdir(parents=True)
        argv = [a.replace(D, str(data)).replace("{model}", str(model_dir)) for a in case.argv]
        if argv[0] == "predict" and "--output" not in argv:
            argv += ["--output", str(folder / "preds.csv")]
        env = {k: v.replace(D, str(data)) for k, v in case.env.items()}
        env["MTL_STATE_DIR"] = str(folder / "state")
        specs.append({"id": case.id, "argv": argv, "env": env, "dir": str(folder)})
    (root / "cases.json").write_text(json.dumps(specs))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("cli_batch.py"))]
        + [str(root / "cases.json"), str(root / "results.json")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((root / "results.json").read_text())
    return {
        spec["id"]: (
            runs[spec["id"]]["rc"],
            (Path(spec["dir"]) / "stdout").read_text(),
            (Path(spec["dir"]) / "stderr").read_text(),
            Path(spec["dir"]),
            runs[spec["id"]]["seconds"],
        )
        for spec in specs
    }


def test_cases_have_distinct_ids():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_nothing_written(results, case):
    rc, stdout, stderr, folder, seconds = results[case.id]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert rc == 2, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("mtl: error: ")
    for fragment in case.fragments:
        assert fragment in lines[0], lines[0]
    assert stdout == ""
    assert SECRET not in stderr
    # Nothing written: the state folder holds folders only (no Prefect, MLflow or Optuna
    # database), and no predictions file, whole or partial.
    written = [p for p in (folder / "state").rglob("*") if not p.is_dir()]
    assert written == []
    assert sorted(p.name for p in folder.iterdir()) == ["state", "stderr", "stdout"]
    assert seconds < 30, f"took {seconds} s"


def test_the_deployment_form_offers_only_the_bundled_configs():
    """The schema ``mtl deploy`` sends to the server, and the server's check of a run against it."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    from flows.pipeline import mtl_pipeline
    from mtl_core.config import config_names

    schema = parameter_schema(mtl_pipeline).model_dump_for_openapi()
    form = schema["definitions"]["PipelineParams"]
    assert form["properties"]["config"]["enum"] == config_names()  # rendered as a dropdown
    assert form["properties"]["config"]["default"] == "default"

    def check(params: dict) -> None:
        validate({"params": params}, schema, raise_on_error=True, preprocess=True)

    check({"config": "penguins", "overrides": ["search.storage=postgresql+psycopg2://u@db/o"]})
    for params, field_ in [
        ({"config": "../../../etc/passwd"}, "params.config"),
        ({"config": str(REPO / "configs" / "default.yaml")}, "params.config"),
        ({"overrides": ["search.storage=postgresql+psycopg2://u:pw@db/o"]}, "params.overrides[0]"),
    ]:
        with pytest.raises(ValidationError, match=re.escape(f"field '{field_}'")):
            check(params)
