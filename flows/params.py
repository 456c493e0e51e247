"""The pipeline flow's parameters: flat, typed, bounded and described.

Prefect renders this model as a form in its dashboard ("Run" / custom run)
and validates what a user types against it before the run starts. Every field
left empty falls back to the config file.

Two routes lead into the flow, and only one accepts a file path:

- **The dashboard, the API and schedules** send JSON that is validated into this
  model as is. ``config`` must then be the name of a config in the deployment's
  ``configs/``; the form shows those names as a dropdown (a JSON-schema ``enum``,
  which Prefect also enforces on the server), and a path is refused, so a
  dashboard user cannot make a worker read any other file.
- **The ``mtl`` command** runs the flow in its own process for a user who can
  read the file anyway. It resolves and validates the config itself, then builds
  the parameters with :meth:`PipelineParams.local`, which alone accepts a path to
  an existing YAML file. That permission lives in pydantic's validation context,
  which JSON coming from a server cannot carry.

No parameter may hold a password: an override with a credentialed URL is
refused (``MTL_OPTUNA_STORAGE`` on the worker carries the storage URL instead),
since Prefect stores parameters in clear text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mtl_core.config import bounded, bundled_config, config_names
from mtl_core.errors import ConfigError
from mtl_core.redact import has_credentials, redact_url

# The context key that lets a config be a file path (see the module docstring).
ALLOW_PATHS = "allow_config_paths"
# JSON-schema form of the credentials check on overrides, so the server refuses them too.
NO_PASSWORD_PATTERN = r"^(?![\s\S]*://[^\s:/?#@]*:[^\s/?#]+@)"


def _number_fields(schema: dict[str, Any]) -> None:
    """Give each property its ``position``: Prefect's form orders nested fields by it."""
    for position, prop in enumerate(schema.get("properties", {}).values()):
        prop["position"] = position


def _config_choices(schema: dict[str, Any]) -> None:
    """The bundled config names as an ``enum``: Prefect's form renders it as a dropdown.

    Computed when the schema is generated (``mtl deploy``), from the configs/ the
    deployment will run.
    """
    schema.pop("minLength", None)
    schema.pop("maxLength", None)
    schema["enum"] = config_names()


class PipelineParams(BaseModel):
    """What a person or a schedule may choose for one run of ``mtl-pipeline``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_number_fields)

    config: str = Field(
        "default",
        min_length=1,
        max_length=500,
        description="Config to run: one of the configs in the deployment's configs/ folder.",
        json_schema_extra=_config_choices,
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="MLflow experiment and registered model name; empty = the config's.",
    )
    n_trials: bounded(int, ge=1, le=1000) | None = Field(
        None, description="Finished trials the Optuna study should hold in total."
    )
    timeout_minutes: bounded(float, gt=0, le=1440) | None = Field(
        None, description="Stop starting new trials after this many minutes."
    )
    n_workers: bounded(int, ge=1, le=32) | None = Field(
        None, description="Parallel search workers on one stored study."
    )
    executor: Literal["local", "pool"] | None = Field(
        None,
        description="Where the search workers run: 'local' (processes of this run) or 'pool' "
        "(trial-worker flow runs on the work pool, any machine); empty = the config's.",
    )
    epochs: bounded(int, ge=1, le=10000) | None = Field(
        None, description="Training epochs per model."
    )
    seed: bounded(int, ge=0, le=2**31 - 1) | None = Field(
        None, description="Seed for the sampler, model init and shuffling."
    )
    device: str | None = Field(
        None,
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.",
    )
    overrides: list[str] = Field(
        [],  # a literal default (pydantic copies it per instance) shows in the form's schema
        max_length=50,
        description="Further config overrides as key=value, e.g. loss.penalty_scope=all.",
        json_schema_extra={"items": {"type": "string", "pattern": NO_PASSWORD_PATTERN}},
    )
    new_study: bool = Field(
        False,
        description="Search in a new Optuna study named after the experiment and the run's "
        "start time, instead of resuming the experiment's study (scheduled runs do this).",
    )

    @classmethod
    def local(cls, config: str | Path, **fields: Any) -> PipelineParams:
        """Parameters for a run started in this process: ``config`` may be a YAML file path.

        The route of the ``mtl`` command (and of tests): see the module docstring.
        """
        return cls.model_validate({"config": str(config), **fields}, context={ALLOW_PATHS: True})

    @field_validator("config")
    @classmethod
    def _bundled_or_local(cls, value: str, info: ValidationInfo) -> str:
        if bundled_config(value):
            return value.removesuffix(".yaml")
        if info.context and info.context.get(ALLOW_PATHS) and Path(value).is_file():
            return value
        raise ValueError(f"'{value[:80]}' is not a bundled config; choose one of {config_names()}")

    @field_validator("overrides")
    @classmethod
    def _no_credentials(cls, value: list[str]) -> list[str]:
        for item in value:
            if has_credentials(item):
                raise ValueError(
                    f"'{redact_url(item)[:200]}' holds a password, and Prefect stores "
                    "parameters in clear text; set MTL_OPTUNA_STORAGE on the worker instead"
                )
        return value

    def config_overrides(self) -> list[str]:
        """The typed fields as ``key=value`` overrides, followed by ``overrides``."""
        pairs = {
            "tracking.experiment": self.experiment,
            "search.n_trials": self.n_trials,
            "search.timeout_minutes": self.timeout_minutes,
            "search.n_workers": self.n_workers,
            "search.executor": self.executor,
            "train.epochs": self.epochs,
            "train.seed": self.seed,
            "search.seed": self.seed,
            "train.device": self.device,
        }
        return [f"{k}={v}" for k, v in pairs.items() if v is not None] + list(self.overrides)

    @classmethod
    def merged(cls, deployment: dict[str, Any], sent: dict[str, Any]) -> PipelineParams:
        """A deployment's ``params`` with the fields a run ``sent`` replacing theirs.

        Prefect merges a run's parameters into its deployment's one top-level key at a
        time, so a run that sends ``{"params": {"n_trials": 5}}`` arrives with every
        other field at the model's default; the flow merges again, field by field.
        """
        return cls(**{**deployment, **sent})


class TrialWorkerParams(BaseModel):
    """What a pool-mode run gives each of its trial workers (the ``mtl-trial-worker`` flow).

    Filled in by the pipeline, not by people. No secret travels here: each worker
    reads the Optuna storage and the tracking server from its own environment.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_number_fields)

    config: dict[str, Any] = Field(description="The run's experiment config, resolved.")
    experiment_id: str = Field(min_length=1, description="MLflow experiment of the run.")
    parent_run_id: str = Field(min_length=1, description="MLflow parent run of the trials.")
    parent_flow_run_id: str | None = Field(
        None, description="The pipeline's flow run; the worker stops when it has ended."
    )
    data_fingerprint: str = Field(
        min_length=1, description="Fingerprint of the run's data; the worker checks its own."
    )
    lock_key: str = Field(min_length=1, description="Key of the study's trial-claim lock.")
    worker: int = Field(0, ge=0, description="This worker's number within its run.")
    torch_threads: int | None = Field(
        None, ge=1, description="Torch threads of the worker; empty = torch's default."
    )


def params_error(exc: ValidationError, what: str) -> ConfigError:
    """The first problem of invalid parameters as a one-line ConfigError naming the field."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return ConfigError(f"{what}: parameter '{where}': {err['msg'].removeprefix('Value error, ')}")


class ScoreParams(BaseModel):
    """What a person or a schedule may choose for one run of ``mtl-score``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_number_fields)

    input: str = Field(
        min_length=1,
        max_length=1000,
        description="CSV or Parquet file, a folder of them, or a glob such as "
        "'/data/incoming/*.parquet'.",
    )
    output: str = Field(
        min_length=1,
        max_length=1000,
        description="Parquet file of predictions; {date}, {time} (UTC, at the start) and "
        "{version} are filled in. Written only when the whole batch succeeds.",
    )
    model_uri: str = Field(
        "models:/mtl-default@champion",
        min_length=1,
        max_length=500,
        description="Registered model with an alias (resolved once, at the start) or a version.",
    )
    chunk_rows: bounded(int, ge=100, le=10_000_000) = Field(
        100_000, description="Rows read and scored at a time."
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="MLflow experiment of the scoring run; "
        "empty = '<training experiment>-scoring'.",
    )
    psi_threshold: bounded(float, gt=0, le=10) | None = Field(
        None,
        description="Drift: PSI at or above which a feature drifts; "
        "empty = the model's (drift.psi_threshold).",
    )
    p_value: bounded(float, gt=0, lt=1) | None = Field(
        None,
        description="Drift: significance level of the per-feature test; "
        "empty = the model's (drift.p_value).",
    )
    sample_rows: bounded(int, ge=100, le=1_000_000) | None = Field(
        None,
        description="Drift: rows of the batch compared (a uniform "
        "sample); empty = the model's (drift.sample_rows).",
    )
    fail_on_drift: bool | None = Field(
        None,
        description="Fail the run, writing nothing, when drift is flagged; empty = the "
        "model's (drift.fail).",
    )
