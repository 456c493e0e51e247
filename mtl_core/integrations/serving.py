"""The deployable model: an MLflow pyfunc that takes raw rows and returns named columns.

MLflow's PyTorch flavour returns a single output, so the multi-task network
is wrapped in a ``PythonModel``: preprocessing runs inside, and ``predict``
returns one DataFrame with, per task, the class (and probabilities) or the
value. The ``mtl_core`` package travels with the model as code, so it loads
in a fresh process without this repository.

Nothing in the model is a pickle: the network is rebuilt from its
:class:`~mtl_core.model.ModelSpec` (JSON) and a weights-only state dict, and the
preprocessor from JSON plus a ``skops`` file that loads scikit-learn types only.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.models import infer_signature

from mtl_core.model import ModelSpec, MultiTaskModel
from mtl_core.preprocess import Preprocessor
from mtl_core.train import predict_outputs

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the mtl_core package


class MultiTaskPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw feature rows in, one prediction DataFrame out."""

    def load_context(self, context) -> None:
        """Rebuild the network from its spec, load its weights and the preprocessor."""
        spec = ModelSpec.from_json(Path(context.artifacts["spec"]).read_text())
        self.net = MultiTaskModel(spec)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()
        self.pre = Preprocessor.load(Path(context.artifacts["preprocessor"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Score raw rows; returns ``{task}`` plus ``{task}_proba[_{class}]`` columns."""
        X, C = self.pre.transform(pd.DataFrame(model_input), source="model input")
        return self.pre.predictions(predict_outputs(self.net, X, C, device="cpu"))


def save_pyfunc(
    path: Path, net: MultiTaskModel, pre: Preprocessor, input_example: pd.DataFrame
) -> None:
    """Write the pyfunc model directory at ``path`` (signature and input example included).

    Args:
        path: Target directory; must not exist yet.
        net: The trained model (any device); its ``spec`` is saved with it.
        pre: The fitted preprocessor of the data it was trained on.
        input_example: A few raw feature rows.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp / "weights.pt")
        (tmp / "spec.json").write_text(net.spec.to_json())
        pre.save(tmp / "preprocessor")
        example = input_example.reset_index(drop=True)
        # Integer columns become float so the signature accepts rows with missing values.
        ints = [c for c in example.columns if pd.api.types.is_integer_dtype(example[c])]
        example = example.astype(dict.fromkeys(ints, "float64"))
        X, C = pre.transform(example)
        preds = pre.predictions(predict_outputs(net, X, C, device="cpu"))
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # models-from-code
            artifacts={
                "weights": str(tmp / "weights.pt"),
                "spec": str(tmp / "spec.json"),
                "preprocessor": str(tmp / "preprocessor"),
            },
            code_paths=[str(PACKAGE_DIR)],
            signature=infer_signature(example, preds),
            input_example=example,
            # Listing requirements skips MLflow's slow inference of them in a subprocess.
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    from importlib.metadata import version

    pkgs = ("mlflow", "pandas", "scikit-learn", "numpy", "pydantic", "pyyaml", "skops")
    pins = [f"{pkg}=={version(pkg)}" for pkg in (*pkgs, "rtdl_num_embeddings")]
    return [*pins, f"torch=={torch.__version__.split('+')[0]}"]
