"""The deployable model: an MLflow pyfunc that takes raw rows and returns named columns.

MLflow's PyTorch flavour returns a single output, so the multi-task network
is wrapped in a ``PythonModel``: preprocessing runs inside, and ``predict``
returns one DataFrame with, per task, the class (and probabilities) or the
value. The ``mtl_core`` package travels with the model as code, so it loads
in a fresh process without this repository.

Nothing in the model is a pickle: the network is rebuilt from its
:class:`~mtl_core.model.ModelSpec` (JSON) and a weights-only state dict, and the
preprocessor from JSON plus a ``skops`` file that loads scikit-learn types only.

The model also carries the reference profile of its training inputs
(:mod:`mtl_core.drift`, JSON), which scoring runs compare new batches with, and its
``metadata`` in ``MLmodel`` names the row-id column, if the config has one.

Rows the model cannot score (a missing feature, text in a numeric column, an infinite
value) raise ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which MLflow's
scoring server answers with HTTP 400 and the message.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mtl_core.config import ExperimentConfig
from mtl_core.data import PreparedData
from mtl_core.drift import Profile, build_profile
from mtl_core.errors import DataError
from mtl_core.model import ModelSpec, MultiTaskModel
from mtl_core.preprocess import Preprocessor
from mtl_core.train import predict_outputs

PROFILE_ARTIFACT = "drift_profile"

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the mtl_core package


class MultiTaskPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw feature rows in, one prediction DataFrame out.

    Attributes (after loading):
        profile: The reference profile of the training inputs, or None for a model
            logged before profiles existed.
    """

    def load_context(self, context) -> None:
        """Rebuild the network from its spec, load its weights, the preprocessor and profile."""
        spec = ModelSpec.from_json(Path(context.artifacts["spec"]).read_text())
        self.net = MultiTaskModel(spec)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()
        self.pre = Preprocessor.load(Path(context.artifacts["preprocessor"]))
        profile = context.artifacts.get(PROFILE_ARTIFACT)
        self.profile = Profile.from_dict(json.loads(Path(profile).read_text())) if profile else None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Score raw rows; returns ``{task}`` plus ``{task}_proba[_{class}]`` columns.

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` when rows cannot be scored.
        """
        frame = pd.DataFrame(model_input)
        try:
            _check_finite(frame, self.pre.numeric)
            X, C = self.pre.transform(frame, source="model input")
        except DataError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return self.pre.predictions(predict_outputs(self.net, X, C, device="cpu"))


def _check_finite(frame: pd.DataFrame, numeric: list[str]) -> None:
    """DataError naming the first numeric column and row that hold an infinite value."""
    for col in numeric:
        if col not in frame.columns or not pd.api.types.is_float_dtype(frame[col]):
            continue  # missing or text columns are reported by the preprocessor
        values = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isinf(values))
        if len(bad):
            rows = "1 row" if len(bad) == 1 else f"{len(bad)} rows"
            raise DataError(
                f"model input: column '{col}' holds an infinite value in {rows} (first: row "
                f"{int(bad[0])}, {values[bad[0]]}); expected a finite number or a missing value"
            )


@contextmanager
def pyfunc_model(
    net: MultiTaskModel,
    pre: Preprocessor,
    input_example: pd.DataFrame,
    profile: Profile | None = None,
    metadata: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """The keyword arguments of ``mlflow.pyfunc.save_model`` / ``log_model`` for this model.

    The files they point to (weights, spec, preprocessor, profile) live in a temporary
    folder until the block ends.

    Args:
        net: The trained model (any device); its ``spec`` is saved with it.
        pre: The fitted preprocessor of the data it was trained on.
        input_example: A few raw feature rows.
        profile: The reference profile of the training inputs, for drift checks.
        metadata: Extra entries of ``MLmodel``'s ``metadata`` (e.g. ``id_column``).

    Yields:
        ``python_model``, ``artifacts``, ``code_paths``, ``signature``, ``input_example``,
        ``pip_requirements`` and ``metadata``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp / "weights.pt")
        (tmp / "spec.json").write_text(net.spec.to_json())
        pre.save(tmp / "preprocessor")
        artifacts = {
            "weights": str(tmp / "weights.pt"),
            "spec": str(tmp / "spec.json"),
            "preprocessor": str(tmp / "preprocessor"),
        }
        if profile is not None:
            (tmp / "drift_profile.json").write_text(json.dumps(profile.to_dict()))
            artifacts[PROFILE_ARTIFACT] = str(tmp / "drift_profile.json")
        example = input_example.reset_index(drop=True)
        # Integer columns become float so the signature accepts rows with missing values.
        ints = [c for c in example.columns if pd.api.types.is_integer_dtype(example[c])]
        example = example.astype(dict.fromkeys(ints, "float64"))
        X, C = pre.transform(example)
        preds = pre.predictions(predict_outputs(net, X, C, device="cpu"))
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
        yield {
            "python_model": str(Path(__file__).with_name("pyfunc_entry.py")),  # models-from-code
            "artifacts": artifacts,
            "code_paths": [str(PACKAGE_DIR)],
            "signature": infer_signature(example, preds),
            "input_example": example,
            # Listing requirements skips MLflow's slow inference of them in a subprocess.
            "pip_requirements": _requirements(),
            "metadata": dict(metadata or {}),
        }


def model_package(
    net: MultiTaskModel, cfg: ExperimentConfig, data: PreparedData
) -> AbstractContextManager[dict[str, Any]]:
    """:func:`pyfunc_model` for a model trained with ``cfg`` on ``data``.

    The package holds five test rows as the input example, the reference profile of the
    training split's features (built with ``cfg.drift``, whose thresholds it carries), and
    the row-id column and tasks in ``MLmodel``'s metadata.
    """
    pre = data.preprocessor
    d = cfg.drift
    profile = build_profile(
        data.splits["train"].rows,
        pre.numeric,
        pre.categorical,
        bins=d.bins,
        quantiles=d.quantiles,
        max_categories=d.max_categories,
        settings=d.model_dump(mode="json"),
    )
    metadata = {
        "id_column": cfg.data.id_column,
        "tasks": [{"name": t.name, "type": t.type} for t in pre.tasks],
        "dataset_fingerprint": data.fingerprint,
    }
    example = data.splits["test"].rows.head(5)
    return pyfunc_model(net, pre, example, profile, metadata)


def save_pyfunc(
    path: Path,
    net: MultiTaskModel,
    pre: Preprocessor,
    input_example: pd.DataFrame,
    profile: Profile | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write the pyfunc model directory at ``path`` (signature and input example included).

    Args:
        path: Target directory; must not exist yet.
        net: The trained model (any device); its ``spec`` is saved with it.
        pre: The fitted preprocessor of the data it was trained on.
        input_example: A few raw feature rows.
        profile: The reference profile of the training inputs, for drift checks.
        metadata: Extra entries of ``MLmodel``'s ``metadata``.
    """
    with pyfunc_model(net, pre, input_example, profile, metadata) as kwargs:
        mlflow.pyfunc.save_model(path=str(path), **kwargs)


def _requirements() -> list[str]:
    from importlib.metadata import version

    pkgs = ("mlflow", "pandas", "scikit-learn", "numpy", "pydantic", "pyyaml", "skops", "scipy")
    pins = [f"{pkg}=={version(pkg)}" for pkg in (*pkgs, "rtdl_num_embeddings")]
    return [*pins, f"torch=={torch.__version__.split('+')[0]}"]
