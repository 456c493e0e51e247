"""The deployable model: an MLflow pyfunc that takes raw rows and returns named columns.

MLflow's PyTorch flavour returns a single output, so the multi-task network
is wrapped in a ``PythonModel``: preprocessing runs inside, and ``predict``
returns one DataFrame with, per task, the class (and probabilities) or the
value. The ``mtl_core`` package travels with the model as code, so it loads
in a fresh process without this repository.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.models import infer_signature

from mtl_core.data import Preprocessor
from mtl_core.model import MultiTaskNet
from mtl_core.train import predict_outputs

PACKAGE_DIR = Path(__file__).resolve().parent


class MultiTaskPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw feature rows in, one prediction DataFrame out."""

    def load_context(self, context) -> None:
        """Load the network weights, its shape and the fitted preprocessor."""
        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.net = MultiTaskNet(**spec)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()
        with open(context.artifacts["preprocessor"], "rb") as f:
            self.pre: Preprocessor = pickle.load(f)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Score raw rows; returns ``{task}`` plus ``{task}_proba[_{class}]`` columns."""
        X = self.pre.transform(pd.DataFrame(model_input), source="model input")
        return self.pre.predictions(predict_outputs(self.net, X, device="cpu"))


def save_pyfunc(
    path: Path, net: MultiTaskNet, spec: dict, pre: Preprocessor, input_example: pd.DataFrame
) -> None:
    """Write the pyfunc model directory at ``path`` (signature and input example included).

    Args:
        path: Target directory; must not exist yet.
        net: The trained network (any device).
        spec: The keyword arguments that rebuild ``net`` (``MultiTaskNet(**spec)``).
        pre: The fitted preprocessor.
        input_example: A few raw feature rows.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp / "weights.pt")
        (tmp / "spec.json").write_text(json.dumps(spec))
        with open(tmp / "preprocessor.pkl", "wb") as f:
            pickle.dump(pre, f)
        example = input_example.reset_index(drop=True)
        # Integer columns become float so the signature accepts rows with missing values.
        ints = [c for c in example.columns if pd.api.types.is_integer_dtype(example[c])]
        example = example.astype(dict.fromkeys(ints, "float64"))
        preds = pre.predictions(predict_outputs(net, pre.transform(example), device="cpu"))
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(PACKAGE_DIR / "pyfunc_entry.py"),  # MLflow's models-from-code
            artifacts={
                n: str(tmp / f)
                for n, f in (
                    ("weights", "weights.pt"),
                    ("spec", "spec.json"),
                    ("preprocessor", "preprocessor.pkl"),
                )
            },
            code_paths=[str(PACKAGE_DIR)],
            signature=infer_signature(example, preds),
            input_example=example,
            # Listing requirements skips MLflow's slow inference of them in a subprocess.
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    from importlib.metadata import version

    pins = [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "pandas", "scikit-learn", "numpy")]
    return [*pins, f"torch=={torch.__version__.split('+')[0]}"]
