"""The model a scoring run uses: a registry alias resolved to one version, loaded once.

``models:/<name>@<alias>`` is resolved to ``models:/<name>/<version>`` when a scoring run
starts, and only that concrete URI is loaded, so an alias that moves during the run (a
promotion) cannot mix two models in one batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mtl_core.drift import Profile
from mtl_core.errors import ConfigError, DataError
from mtl_core.scoring import NUMERIC, OTHER, STRING, InputSchema

_ALIAS = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)")
_VERSION = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)")
_NUMERIC_TYPES = {"double", "float", "long", "integer", "boolean"}


@dataclass(frozen=True)
class ModelRef:
    """A model URI as asked for, and the concrete model it named at resolution time.

    Attributes:
        requested: The URI as given (``models:/mtl-default@champion``).
        uri: What is loaded (``models:/mtl-default/3``), or ``requested`` outside the registry.
        name: Registered model name, or None.
        version: Registry version, or None.
        alias: The alias resolved, or None.
        run_id: The run that produced the version (the training run), or None.
        model_id: The MLflow 3 logged model behind the version, or None.
    """

    requested: str
    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    model_id: str | None = None

    @property
    def label(self) -> str:
        """The version when registered, else the URI: what each prediction row records."""
        return self.version or self.uri


def resolve(client: MlflowClient, uri: str) -> ModelRef:
    """Resolve ``models:/name@alias`` (or ``/version``, ``/latest``) to one registry version.

    Other URIs (``runs:/``, ``models:/<model_id>``, a path) are returned as they are.

    Raises:
        ConfigError: The registered model, version or alias does not exist.
    """
    m = _ALIAS.fullmatch(uri) or _VERSION.fullmatch(uri)
    if m is None:
        return ModelRef(uri, uri)
    name, alias, version = m["name"], m.groupdict().get("alias"), m.groupdict().get("version")
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version == "latest":
            found = client.search_model_versions(f"name = '{name}'")
            if not found:
                raise ConfigError(f"model '{uri}': registered model '{name}' has no version")
            mv = max(found, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ConfigError(f"model '{uri}': not found ({_first_line(exc)})") from None
    return ModelRef(
        uri,
        f"models:/{name}/{mv.version}",
        name,
        str(mv.version),
        alias,
        mv.run_id or None,
        getattr(mv, "model_id", None) or _logged_model_id(mv.source),
    )


def _logged_model_id(source: str | None) -> str | None:
    """The logged model a version was registered from (``models:/m-...``), if it was."""
    m = re.fullmatch(r"models:/(m-[0-9a-f]+)", source or "")
    return m[1] if m else None


def input_schema(signature) -> InputSchema:
    """The model signature's inputs as an :class:`InputSchema`."""
    spec = signature.inputs
    kinds = {}
    for name, kind in zip(spec.input_names(), spec.input_types(), strict=True):
        kind = getattr(kind, "name", str(kind))
        kinds[name] = NUMERIC if kind in _NUMERIC_TYPES else STRING if kind == "string" else OTHER
    return InputSchema(kinds)


@dataclass
class LoadedModel:
    """A resolved model loaded once, with what scoring needs from it.

    Attributes:
        ref: What was asked for and what was loaded.
        pyfunc: The MLflow pyfunc model.
        schema: Its input columns.
        id_column: The row-id column named in its metadata, or None.
        profile: The reference profile of its training inputs, or None.
    """

    ref: ModelRef
    pyfunc: mlflow.pyfunc.PyFuncModel
    schema: InputSchema
    id_column: str | None
    profile: Profile | None

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Score rows; the model's refusal becomes a one-line DataError."""
        try:
            return self.pyfunc.predict(rows)
        except MlflowException as exc:
            reason = str(exc.message).rsplit("Error: ", 1)[-1].strip()
            reason = reason.splitlines()[0] if reason else type(exc).__name__
            raise DataError(f"rows do not match the model's input schema ({reason})") from None


def describe(ref: ModelRef) -> tuple[InputSchema, str | None]:
    """The input schema and row-id column of a model, from its ``MLmodel`` file only."""
    try:
        info = mlflow.models.get_model_info(ref.uri)
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"model '{ref.requested}': cannot load ({_first_line(exc)})") from None
    if info.signature is None:
        raise ConfigError(f"model '{ref.requested}': it has no signature to check rows against")
    return input_schema(info.signature), (info.metadata or {}).get("id_column")


def load(ref: ModelRef) -> LoadedModel:
    """Load the concrete model of ``ref`` (never the alias again).

    Raises:
        ConfigError: The model cannot be loaded or has no signature.
    """
    try:
        model = mlflow.pyfunc.load_model(ref.uri)
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"model '{ref.requested}': cannot load ({_first_line(exc)})") from None
    signature = model.metadata.signature
    if signature is None:
        raise ConfigError(f"model '{ref.requested}': it has no signature to check rows against")
    try:
        inner = model.unwrap_python_model()
    except MlflowException:  # not a python_model pyfunc: no profile
        inner = None
    return LoadedModel(
        ref,
        model,
        input_schema(signature),
        (model.metadata.metadata or {}).get("id_column"),
        getattr(inner, "profile", None),
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
