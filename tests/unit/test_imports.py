"""The library's edge: the training path imports no service client, leaves os.environ alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SERVICES = ["optuna", "mlflow", "matplotlib", "prefect"]
TRAINING_PATH = [
    "mtl_core.data",
    "mtl_core.train",
    "mtl_core.metrics",
    "mtl_core.baselines",
    "mtl_core.model",
]
# What the training path imports from outside the project. scikit-learn sets
# KMP_DUPLICATE_LIB_OK and KMP_INIT_AT_FORK when imported, so the environment is compared
# after these and before mtl_core's own modules.
DEPENDENCIES = ["numpy", "pandas", "scipy", "sklearn", "torch", "yaml", "pydantic"]

SCRIPT = """
import json, os, sys
services = set(json.loads(sys.argv[1]))

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in services)

def changed(before):
    after = dict(os.environ)
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))

start = dict(os.environ)
import mtl_core
package = {"services": loaded(), "environ": changed(start)}
for name in json.loads(sys.argv[2]):
    __import__(name)
with_dependencies = dict(os.environ)
for name in json.loads(sys.argv[3]):
    __import__(name)
training = {"services": loaded(), "environ": changed(with_dependencies)}
print(json.dumps({"package": package, "training": training}))
"""


def test_training_path_imports_no_service_and_keeps_the_environment():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            json.dumps(SERVICES),
            json.dumps(DEPENDENCIES),
            json.dumps(TRAINING_PATH),
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["package"] == {"services": [], "environ": []}
    assert seen["training"] == {"services": [], "environ": []}


def test_the_served_model_needs_no_training_only_package():
    # The pyfunc model pins its pip requirements (serving._requirements); torchjd, which only
    # the weighting methods use while training, is not among them, so loading the model's code
    # must not import it.
    code = (
        "import sys; import mtl_core.integrations.serving, mtl_core.model, mtl_core.preprocess; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchjd', 'optuna', 'prefect'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    from mtl_core.integrations.serving import _requirements

    assert not any(r.startswith(("torchjd", "optuna", "prefect")) for r in _requirements())
