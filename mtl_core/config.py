"""Typed experiment configuration, loaded from YAML.

Config flows one way: a YAML file (plus ``key=value`` overrides) is validated
into :class:`ExperimentConfig`; small ``build_*`` functions elsewhere turn its
sections into plain objects. Unknown keys are rejected, and every error names
the file, the key and what was expected.
"""

from __future__ import annotations

import copy
import json
import os
import re
import reprlib
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from mtl_core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# A bundled config's name: a file stem in configs/, never a path.
CONFIG_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
MAX_CONFIG_BYTES = 1 << 20
# Nodes that YAML aliases may add to a document by repeating anchored ones.
MAX_ALIAS_NODES = 10_000


def _not_bool(value: Any) -> Any:
    # YAML and JSON booleans are ints to pydantic's lax mode: `n_trials: true` would be 1.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
    return value


# Numbers that refuse booleans; strings such as YAML 1.1's "1e-3" still convert.
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
PosInt = Annotated[PositiveInt, BeforeValidator(_not_bool)]


def bounded(kind: type[int] | type[float], **bounds: float) -> Any:
    """``Int`` or ``Float`` within ``bounds`` (``ge``, ``le``, ``gt``, ``lt``).

    For forms: bounds given to the field of an ``Int`` validate but show in its JSON
    schema as raw ``ge``/``le`` keys, which neither Prefect's form nor its server
    understand; placed before the boolean check they render as ``minimum``/``maximum``.
    """
    return Annotated[kind, Field(**bounds), BeforeValidator(_not_bool)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class TaskConfig(_Strict):
    """One prediction task: a name, the target column and the task type."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]*$", description="Task key.")
    column: str = Field(min_length=1, description="Target column in the data.")
    type: str = Field(description="A registered task type: binary, multiclass, regression.")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from mtl_core.tasks import TASK_TYPES

        if value not in TASK_TYPES:
            raise ValueError(f"unknown task type '{value}'; known: {sorted(TASK_TYPES)}")
        return value


class SyntheticConfig(_Strict):
    """Parameters of the MMoE synthetic generator (Ma et al., KDD 2018)."""

    n_rows: Int = Field(4000, ge=20)
    dim: Int = Field(100, ge=2, description="Input dimension d.")
    correlation: Float = Field(0.9, ge=-1.0, le=1.0, description="Task correlation p.")
    n_tasks: Int = Field(2, ge=1, le=64)
    scale: Float = Field(1.0, gt=0, description="c: norm of each task's weight vector.")
    n_sin: Int = Field(10, ge=0, description="m: number of sine terms.")
    noise_std: Float = Field(0.1, ge=0)
    binarize: list[str] = Field(
        default_factory=list, description="Generated targets (y0, y1, ...) to split at the median."
    )
    seed: Int = 0


class DataConfig(_Strict):
    """Where the rows come from, which tasks to learn, and how to split."""

    source: Literal["file", "synthetic", "penguins"] = "file"
    path: str | None = Field(None, description="CSV or Parquet file, for source 'file'.")
    features: list[str] | None = Field(None, description="Feature columns; default all others.")
    id_column: str | None = Field(
        None,
        min_length=1,
        description="Row id: never a feature; scoring carries it through to the predictions.",
    )
    tasks: list[TaskConfig] = Field(min_length=1)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    val_fraction: Float = Field(0.15, gt=0, lt=0.5)
    test_fraction: Float = Field(0.15, gt=0, lt=0.5)
    split_seed: Int = 0
    coerce_numeric: list[str] = Field(
        [], description="Numeric columns whose stray text values are read as missing."
    )
    categorical: list[str] = Field(
        [], description="Text columns that are categories even when most values look numeric."
    )
    non_finite: Literal["error", "missing"] = Field(
        "error",
        description="inf, -inf and values beyond float32 (±3.4e38): refuse them, or read them "
        "as missing (features are imputed, labels are masked).",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        names = [t.name for t in self.tasks]
        dupes = duplicates(names)
        if dupes:
            raise ValueError(f"duplicate task names {dupes}; each task needs its own name")
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs 'path' (a .csv or .parquet file)")
        if self.id_column and self.id_column in (self.features or []):
            raise ValueError(f"id_column '{self.id_column}' must not be one of the features")
        if self.id_column and self.id_column in {t.column for t in self.tasks}:
            raise ValueError(f"id_column '{self.id_column}' must not be a task's target column")
        for key in ("features", "coerce_numeric", "categorical"):
            dupes = duplicates(getattr(self, key) or [])
            if dupes:
                raise ValueError(f"data.{key} lists {dupes} more than once")
        both = sorted(set(self.coerce_numeric) & set(self.categorical))
        if both:
            raise ValueError(f"data.coerce_numeric and data.categorical both list {both}")
        if self.val_fraction + self.test_fraction > 0.5:
            raise ValueError(
                f"data.val_fraction ({self.val_fraction}) + data.test_fraction "
                f"({self.test_fraction}) must be at most 0.5, so that the training split "
                "keeps at least half the rows"
            )
        return self


def duplicates(items: list) -> list[str]:
    """The items that occur more than once, as sorted strings."""
    return sorted(str(x) for x, n in Counter(items).items() if n > 1)


class FeaturesConfig(_Strict):
    """How feature columns are represented: scaling, numeric embeddings, categorical encoding.

    ``numeric`` and ``categorical`` choose the scikit-learn transforms (fitted on
    the training split); the embeddings are layers of the model, trained with it.
    """

    numeric: Literal["standard", "quantile"] = Field(
        "standard", description="Numeric scaling: z-score, or quantiles mapped to a normal."
    )
    numeric_embedding: Literal["none", "periodic", "piecewise_linear"] = Field(
        "none", description="Per-column numeric embeddings (rtdl_num_embeddings)."
    )
    numeric_embedding_dim: Int = Field(16, ge=1, le=256, description="Width per numeric column.")
    n_bins: Int = Field(32, ge=2, le=1024, description="Bins per column, piecewise_linear.")
    n_frequencies: Int = Field(32, ge=1, le=512, description="Frequencies, periodic.")
    frequency_scale: Float = Field(0.1, gt=0, description="Initial frequency scale σ, periodic.")
    categorical: Literal["onehot", "embedding"] = Field(
        "onehot", description="One-hot columns, or a learned embedding table per column."
    )
    embedding_dim: Int | None = Field(
        None, ge=1, le=1024, description="Width per categorical column; null = min(64, 1.6·n^0.56)."
    )

    def preprocessing_key(self) -> tuple[str, str]:
        """The settings that change the scikit-learn transforms (the rest are model layers)."""
        return (self.numeric, self.categorical)


class ModelConfig(_Strict):
    """The architecture (``arch``) and its sizes; per-task towers for every architecture.

    ``hidden`` is the shared-bottom trunk, or each expert's layers in ``mmoe`` and ``ple``.
    """

    arch: str = Field("shared_bottom", description="A registered architecture.")
    hidden: list[Int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["identity", "relu", "gelu", "tanh", "silu"] = "relu"
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["none", "batch", "layer"] = "none"
    head_hidden: Int = Field(0, ge=0, description="Hidden units of each task tower; 0 = linear.")
    n_experts: Int = Field(4, ge=1, le=64, description="Experts (mmoe); shared experts (ple).")
    n_task_experts: Int = Field(1, ge=1, le=16, description="Experts per task (ple).")
    n_levels: Int = Field(1, ge=1, le=8, description="Extraction layers (ple).")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from mtl_core.arch import ARCHS

        if value not in ARCHS:
            raise ValueError(f"unknown architecture '{value}'; known: {sorted(ARCHS)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        return self


class LossConfig(_Strict):
    """How task losses become an update: the weighting method, and L1/L2 penalties.

    With ``weighting: static``, L = sum_t w_t L_t + l1|θ|_1 + l2|θ|²; other methods
    learn or compute their own task weights (see :mod:`mtl_core.weighting`), and
    their options are the fields named after them (``dwa_temperature``, ``famo_lr``).
    """

    weighting: str = Field("static", description="A registered weighting method.")
    weights: dict[str, Float] | None = Field(None, description="Per-task weight; default 1.")
    l1: Float = Field(0.0, ge=0.0)
    l2: Float = Field(0.0, ge=0.0)
    penalty_scope: Literal["trunk", "all"] = "trunk"
    # Options of the weighting methods, each named {method}_{option}: see weighting_options().
    dwa_temperature: Float = Field(
        2.0, gt=0.0, le=100.0, description="DWA's softmax temperature T; larger is more uniform."
    )
    famo_lr: Float = Field(
        0.025, gt=0.0, le=1.0, description="Learning rate of FAMO's Adam on its task logits."
    )
    famo_decay: Float = Field(
        1e-3, ge=0.0, le=1.0, description="Weight decay γ of FAMO's task logits."
    )

    @field_validator("weighting")
    @classmethod
    def _known_weighting(cls, value: str) -> str:
        from mtl_core.weighting import WEIGHTINGS

        if value not in WEIGHTINGS:
            raise ValueError(f"unknown weighting method '{value}'; known: {sorted(WEIGHTINGS)}")
        return value

    def weighting_options(self) -> dict[str, Any]:
        """The selected method's options: fields ``{weighting}_{option}``, keyed by ``option``."""
        prefix = f"{self.weighting}_"
        return {
            k.removeprefix(prefix): v for k, v in self.model_dump().items() if k.startswith(prefix)
        }


class TrainConfig(_Strict):
    """Optimiser, schedule, early stopping and device."""

    epochs: Int = Field(50, ge=1, le=100_000)
    batch_size: Int = Field(256, ge=1)
    lr: Float = Field(1e-3, gt=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: Float = Field(0.0, ge=0.0)
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: Int = Field(10, ge=1, description="Epochs per step of the 'step' schedule.")
    gamma: Float = Field(0.5, gt=0.0, le=1.0)
    grad_clip: Float | None = Field(5.0, gt=0.0)
    patience: Int | None = Field(10, ge=1, description="Early stopping; null = off.")
    min_delta: Float = Field(0.0, ge=0.0)
    seed: Int = 0
    bf16: bool = Field(False, description="bf16 autocast, on CUDA only.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        # Whether this machine has that CUDA device is checked before a run (flows.preflight).
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(
                f"unknown device {short_repr(value)}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )
        return value


class Range(_Strict):
    """A numeric search range."""

    low: Float
    high: Float
    log: bool = True

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class SearchConfig(_Strict):
    """The Optuna search: task weights, penalties and learning rate, plus the open choices.

    Every choice field (``arch``, ``weighting``, ``numeric_embedding``, ...) is a
    list the search picks from, or null to keep the config's own value.
    """

    n_trials: Int = Field(20, ge=1, description="Finished trials the study should hold.")
    timeout_minutes: Float | None = Field(None, gt=0)
    n_workers: Int = Field(1, ge=1, le=64)
    executor: Literal["local", "pool"] = Field(
        "local",
        description="Where the workers run: 'local' (processes of this run) or 'pool' "
        "(trial-worker flow runs on a Prefect work pool, sharing a database study).",
    )
    worker_deployment: str | None = Field(
        None,
        description="Pool mode: the trial-worker deployment, 'flow/name'; default "
        "'mtl-trial-worker/<this run's deployment name, else the config's file stem>'.",
    )
    worker_threads: Int | None = Field(
        None, ge=1, description="Pool mode: torch threads of each trial worker; default torch's."
    )
    pool_wait_minutes: Float = Field(
        120, gt=0, description="Pool mode: the longest the run waits for its trial workers."
    )
    storage: str | None = Field(None, description="Optuna storage URL or journal file.")
    study_name: str | None = None
    sampler: Literal["tpe", "random"] = "tpe"
    seed: Int = 0
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: Int = Field(3, ge=0, description="Trials run before any pruning.")
    pruner_warmup_epochs: Int = Field(2, ge=0, description="Epochs of a trial before pruning.")
    trial_epochs: Int | None = Field(None, ge=1, description="Epochs per trial; default train.")
    population: Int = Field(
        1, ge=1, le=4096, description="Trials trained at once as one batched model; 1 = one by one."
    )
    population_choices: Literal["shared", "per_trial"] = Field(
        "shared",
        description="Population mode: 'shared' gives a batch's trials its first trial's open "
        "choices (so they share a shape and train as one model) and samples the ranges per "
        "trial; 'per_trial' samples everything per trial.",
    )
    cv_folds: Int = Field(
        1, ge=1, le=20, description="k-fold CV on the training split; 1 = the validation split."
    )
    weights: bool = Field(True, description="Search task weights on the simplex (static only).")
    l1: Range | None = Field(default_factory=lambda: Range(low=1e-6, high=1e-2))
    l2: Range | None = Field(default_factory=lambda: Range(low=1e-6, high=1e-2))
    lr: Range | None = Field(default_factory=lambda: Range(low=1e-4, high=1e-2))
    dropout: Range | None = None
    # Choices: each a list to choose from, or null to keep the config's own value.
    width: list[PosInt] | None = Field(None, min_length=1, description="Layer widths.")
    depth: list[PosInt] | None = Field(None, min_length=1, description="Layer counts.")
    batch_size: list[PosInt] | None = Field(None, min_length=1)
    arch: list[str] | None = Field(None, min_length=1, description="Architectures.")
    n_experts: list[PosInt] | None = Field(
        None, min_length=1, description="Expert counts, for mmoe and ple only."
    )
    weighting: list[str] | None = Field(None, min_length=1, description="Weighting methods.")
    numeric: list[Literal["standard", "quantile"]] | None = Field(None, min_length=1)
    numeric_embedding: list[Literal["none", "periodic", "piecewise_linear"]] | None = Field(
        None, min_length=1
    )
    categorical: list[Literal["onehot", "embedding"]] | None = Field(None, min_length=1)
    frequency_scale: Range | None = Field(
        None, description="σ of periodic numeric embeddings, when those are chosen."
    )

    @field_validator("arch")
    @classmethod
    def _known_archs(cls, value: list[str] | None) -> list[str] | None:
        from mtl_core.arch import ARCHS

        unknown = [v for v in value or [] if v not in ARCHS]
        if unknown:
            raise ValueError(f"unknown architecture(s) {unknown}; known: {sorted(ARCHS)}")
        return value

    @field_validator("weighting")
    @classmethod
    def _known_weightings(cls, value: list[str] | None) -> list[str] | None:
        from mtl_core.weighting import WEIGHTINGS

        unknown = [v for v in value or [] if v not in WEIGHTINGS]
        if unknown:
            raise ValueError(f"unknown weighting method(s) {unknown}; known: {sorted(WEIGHTINGS)}")
        return value


class TrackingConfig(_Strict):
    """MLflow experiment and registered model names."""

    experiment: str = Field("mtl-default", min_length=1)
    model_name: str | None = Field(None, description="Registered model; default experiment.")

    @property
    def registered_model(self) -> str:
        """Name of the registered model the final model is versioned under."""
        return self.model_name or self.experiment


class DriftConfig(_Strict):
    """Drift checks of scoring runs against the training inputs (see :mod:`mtl_core.drift`).

    The model carries this section with its reference profile; a scoring run may override
    the thresholds. The defaults were chosen by ``python -m bench.scoring --only drift``
    (docs/benchmarks/scoring.md): they catch at least 95 % of features shifted by 0.5
    standard deviations and flag at most 5 % of unshifted ones from batches of 250 rows up;
    batches above ``sample_rows`` are compared through a uniform sample of that size.
    """

    psi_threshold: Float = Field(
        0.1, gt=0, description="PSI at or above which a significant change is drift."
    )
    p_value: Float = Field(
        0.05, gt=0, lt=1, description="Significance level of the per-feature KS / chi² test."
    )
    sample_rows: Int = Field(
        5000, ge=100, le=1_000_000, description="Rows of a batch compared (a uniform sample)."
    )
    fail: bool = Field(False, description="Fail the scoring run when drift is flagged.")
    bins: Int = Field(10, ge=2, le=100, description="PSI bins per numeric feature.")
    quantiles: Int = Field(200, ge=10, le=5000, description="Quantiles stored per numeric feature.")
    max_categories: Int = Field(
        50, ge=1, le=10_000, description="Levels profiled per categorical feature."
    )


class ExperimentConfig(_Strict):
    """A whole experiment: data and tasks, features, model, loss, training, search, tracking."""

    data: DataConfig
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    baselines: bool = Field(True, description="Train single-task baselines for delta_m.")

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        names = [t.name for t in self.data.tasks]
        if self.loss.weights is not None:
            if set(self.loss.weights) != set(names):
                raise ValueError(
                    f"loss.weights keys {sorted(self.loss.weights)} must match the tasks {names}"
                )
            negative = {k: v for k, v in self.loss.weights.items() if v < 0}
            if negative:
                raise ValueError(f"loss.weights must be >= 0, got {negative}")
            if sum(self.loss.weights.values()) <= 0:
                raise ValueError("loss.weights must not all be zero")
            from mtl_core.weighting import WEIGHTINGS

            if WEIGHTINGS.lookup(self.loss.weighting).learns_weights:
                raise ValueError(
                    f"loss.weights applies to loss.weighting 'static' only; "
                    f"'{self.loss.weighting}' sets its own task weights"
                )
        if self.data.source == "synthetic":
            generated = {f"y{i}" for i in range(self.data.synthetic.n_tasks)}
            unknown = sorted(set(self.data.synthetic.binarize) - generated)
            if unknown:
                raise ValueError(f"data.synthetic.binarize {unknown} not in {sorted(generated)}")
        return self

    @property
    def task_names(self) -> list[str]:
        """Task names in config order."""
        return [t.name for t in self.data.tasks]

    def task_weights(self) -> dict[str, float]:
        """Loss weight per task; 1.0 each when none are given."""
        return dict(self.loss.weights) if self.loss.weights else dict.fromkeys(self.task_names, 1.0)


_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 2, 4, 4, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40
MAX_ERRORS_SHOWN = 5


def short_repr(value: Any) -> str:
    """A repr cut to about 60 characters, built without walking a huge value."""
    return _SHORT.repr(value)


def _format_errors(err: ValidationError) -> str:
    parts = []
    errors = err.errors(include_url=False)
    for e in errors[:MAX_ERRORS_SHOWN]:
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        shown = short_repr(e.get("input"))
        got = "" if e["type"] in ("missing", "value_error") else f" (got {shown})"
        if e["type"] == "extra_forbidden":
            msg, got = "unknown key", ""
        # A whole-config check names its keys in the message itself.
        parts.append(f"key '{key}': {msg}{got}" if key else f"{msg}{got}")
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more error(s)")
    return "; ".join(parts)


def config_names() -> list[str]:
    """Names of the bundled configs: the stems of ``configs/*.yaml``, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if CONFIG_NAME.match(p.stem))


def bundled_config(name: str) -> Path | None:
    """``configs/{name}.yaml`` when ``name`` is a bundled config's name, else None.

    A name is a bare file stem (``default``, or ``default.yaml``): anything with a
    path separator or a leading dot is not a name, so it can never reach outside
    ``configs/``.
    """
    stem = name.removesuffix(".yaml")
    if not CONFIG_NAME.match(stem):
        return None
    path = CONFIG_DIR / f"{stem}.yaml"
    return path if path.is_file() else None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Find a config by bundled name in ``configs/`` (``default`` → default.yaml), or by path.

    A bundled name wins over a file of the same name in the working directory. A
    path is read as given: only callers that trust their user (the ``mtl`` command,
    tests, benchmarks) pass one; the flow's parameters accept bundled names only
    (see :class:`flows.params.PipelineParams`).
    """
    if isinstance(name_or_path, str) and (bundled := bundled_config(name_or_path)):
        return bundled
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise ConfigError(f"{name_or_path}: config file not found (bundled configs: {config_names()})")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # One line, as errors.py promises: PyYAML's own message spans several.
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem}, line {mark.line + 1}" if mark is not None else problem


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """Nodes of the document once aliases are expanded, and distinct nodes.

    Aliases make the composed document a graph that shares nodes; its expanded
    size is counted on that graph (memoised per node), so counting a "billion
    laughs" document takes as long as reading it. Iterative, so a deep document
    cannot exhaust the stack.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            continue
        if key in sizes:
            continue
        if key in open_nodes:  # only a node's own descendants can push it again
            raise yaml.YAMLError("an alias refers to a node that contains it (recursive alias)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)], len(sizes)


class _LimitedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses documents whose aliases expand past a small limit.

    PyYAML shares aliased nodes, so loading a "billion laughs" document is cheap;
    the blow-up comes later, when the value is copied, validated or printed. The
    document is measured before anything is constructed from it.
    """

    def compose_document(self) -> yaml.Node:
        """Compose as usual, then refuse a document that aliases blow up."""
        node = super().compose_document()
        total, distinct = _expanded_size(node)
        if total > distinct + MAX_ALIAS_NODES:
            raise yaml.YAMLError(
                f"aliases expand the document to {short_repr(total)} nodes, over the "
                f"{distinct + MAX_ALIAS_NODES:,} allowed (a 'billion laughs' document?)"
            )
        return node


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the alias limit of :class:`_LimitedLoader`.

    Raises:
        yaml.YAMLError: Invalid YAML, a recursive alias, aliases that expand too
            far, or nesting too deep to parse.
    """
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506  (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], value)``, the value parsed as YAML (aliases limited)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {short_repr(item)}: expected key=value, e.g. train.epochs=5")
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = _yaml_problem(exc)
        raise ConfigError(
            f"override {short_repr(item)}: value is not valid YAML ({problem})"
        ) from None
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with dotted ``key=value`` overrides applied."""
    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"override '{item}': '{k}' is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def validate_config(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a parsed mapping; errors name ``source`` and the offending keys."""
    if not isinstance(raw, dict):
        got = type(raw).__name__
        raise ConfigError(f"{source}: expected a mapping at the top level, got {got}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_errors(exc)}") from None


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning I/O and syntax errors into one-line ConfigErrors.

    Files over 1 MiB and documents whose aliases expand past a small limit are
    refused before anything is built from them.
    """
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file is {size:,} bytes; the limit is 1 MiB")
        return safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read config (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({_yaml_problem(exc)})") from None


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config, apply ``key=value`` overrides and validate it.

    Args:
        name_or_path: A file path, or the name of a file in ``configs/``.
        overrides: Dotted ``key=value`` strings; values are parsed as YAML.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file is missing or invalid, or a key or value is wrong.
    """
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path)
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        raw = apply_overrides(raw, overrides)
    return validate_config(raw, source=str(path))


def flat_params(cfg: ExperimentConfig) -> dict[str, str]:
    """Flatten a config into ``section.key`` strings, as logged to MLflow.

    Tasks are keyed by name (``tasks.income.type``, ``tasks.income.weight``) so
    that runs with the same tasks line up in MLflow's compare view.
    """
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    dumped = cfg.model_dump(mode="json")
    tasks = dumped["data"].pop("tasks")
    dumped["loss"].pop("weights")
    walk("", dumped)
    weights = cfg.task_weights()
    for t in tasks:
        for k in ("column", "type"):
            out[f"tasks.{t['name']}.{k}"] = str(t[k])
        out[f"tasks.{t['name']}.weight"] = str(weights[t["name"]])
    return out


def state_dir() -> Path:
    """The project's runtime state folder: ``MTL_STATE_DIR``, else ``./.state``."""
    return Path(os.environ.get("MTL_STATE_DIR", ".state")).resolve()
