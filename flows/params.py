"""The pipeline flow's parameters: flat, typed, bounded and described.

Prefect renders this model as a form in its dashboard ("Run" / custom run)
and validates what a user types against it before the run starts. Every field
left empty falls back to the config file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _number_fields(schema: dict[str, Any]) -> None:
    """Give each property its ``position``: Prefect's form orders nested fields by it."""
    for position, prop in enumerate(schema.get("properties", {}).values()):
        prop["position"] = position


class PipelineParams(BaseModel):
    """What a person or a schedule may choose for one run of ``mtl-pipeline``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_number_fields)

    config: str = Field(
        "default",
        min_length=1,
        max_length=500,
        description="Config name in configs/ (e.g. 'default', 'penguins') or a YAML file path.",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="MLflow experiment and registered model name; empty = the config's.",
    )
    n_trials: int | None = Field(
        None, ge=1, le=1000, description="Finished trials the Optuna study should hold in total."
    )
    timeout_minutes: float | None = Field(
        None, gt=0, le=1440, description="Stop starting new trials after this many minutes."
    )
    n_workers: int | None = Field(
        None, ge=1, le=32, description="Parallel search workers on one stored study."
    )
    executor: Literal["local", "pool"] | None = Field(
        None,
        description="Where the search workers run: 'local' (processes of this run) or 'pool' "
        "(trial-worker flow runs on the work pool, any machine); empty = the config's.",
    )
    epochs: int | None = Field(None, ge=1, le=10000, description="Training epochs per model.")
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Seed for the sampler, model init and shuffling."
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
    )
    new_study: bool = Field(
        False,
        description="Search in a new Optuna study named after the experiment and the run's "
        "start time, instead of resuming the experiment's study (scheduled runs do this).",
    )

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
    chunk_rows: int = Field(
        100_000, ge=100, le=10_000_000, description="Rows read and scored at a time."
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="MLflow experiment of the scoring run; "
        "empty = '<training experiment>-scoring'.",
    )
    psi_threshold: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Drift: PSI at or above which a feature drifts; "
        "empty = the model's (drift.psi_threshold).",
    )
    p_value: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Drift: significance level of the per-feature test; "
        "empty = the model's (drift.p_value).",
    )
    sample_rows: int | None = Field(
        None,
        ge=100,
        le=1_000_000,
        description="Drift: rows of the batch compared (a uniform "
        "sample); empty = the model's (drift.sample_rows).",
    )
    fail_on_drift: bool | None = Field(
        None,
        description="Fail the run, writing nothing, when drift is flagged; empty = the "
        "model's (drift.fail).",
    )
