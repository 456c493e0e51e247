"""The model card: one markdown page that travels with a logged model.

It says what the model was trained on (data source and fingerprint), what it predicts (the
tasks), how good it is against the single-task baselines (test metrics and Δm), how it was
chosen (the search's best parameters) and where it came from (the training run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mtl_core.config import ExperimentConfig, flat_params
from mtl_core.data import PreparedData
from mtl_core.tasks import Task, metric_direction

# The flattened config keys that the search may choose (what a card calls best parameters).
CHOSEN = ("tasks.", "loss.", "train.lr", "train.batch_size", "model.", "features.")


@dataclass
class CardFacts:
    """What a model card says.

    Attributes:
        model_name: Registered model name.
        experiment: MLflow experiment of the training run.
        run_id: The training (parent) run.
        run_url: A link to it.
        data_source: Where the rows came from.
        fingerprint: Content hash of the dataset.
        n_rows: Rows used (labelled for at least one task).
        features: Feature columns.
        tasks: The fitted tasks.
        metrics: Final metrics, with ``baseline/...`` and ``{split}/delta_m`` keys when
            baselines ran.
        best_params: The search's best parameters, flattened (``loss.l2``, ...).
        best_trial: Number of the best trial.
        id_column: The row-id column, if any.
    """

    model_name: str
    experiment: str
    run_id: str
    run_url: str
    data_source: str
    fingerprint: str
    n_rows: int
    features: list[str]
    tasks: list[Task]
    metrics: dict[str, float]
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    id_column: str | None = None


def _num(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4f}"


def model_card(facts: CardFacts) -> str:
    """The card as markdown."""
    m = facts.metrics
    shown = ", ".join(f"`{c}`" for c in facts.features[:12])
    more = f" and {len(facts.features) - 12} more" if len(facts.features) > 12 else ""
    lines = [
        f"# Model card: {facts.model_name}",
        "",
        "## Data",
        f"- source: `{facts.data_source}`",
        f"- fingerprint: `{facts.fingerprint}`",
        f"- rows: {facts.n_rows:,}",
        f"- features ({len(facts.features)}): {shown}{more}",
        f"- row id: `{facts.id_column}`" if facts.id_column else "- row id: none",
        "",
        "## Tasks",
        "| task | type | target column |",
        "|---|---|---|",
        *[f"| {t.name} | {t.type} | `{t.column}` |" for t in facts.tasks],
        "",
        "## Test metrics against the single-task baselines",
    ]
    dm = m.get("test/delta_m")
    if dm is not None:
        verdict = "sharing helped" if dm > 0 else "sharing did not help"
        lines.append(f"Δm (test) = **{dm:+.2f}%** ({verdict}); Δm (val) = {_dm(m, 'val')}.")
    else:
        lines.append("Baselines were not trained for this model (`baselines: false`).")
    lines += ["", "| task | metric | multi-task | single-task | better |", "|---|---|---|---|---|"]
    for t in facts.tasks:
        for key in sorted(k for k in m if k.startswith(f"test/{t.name}/")):
            metric = key.rsplit("/", 1)[-1]
            base = m.get(f"baseline/{key}")
            better = ""
            if base is not None and math.isfinite(base) and math.isfinite(m[key]):
                up = metric_direction(metric)
                better = "multi-task" if (m[key] > base) == up and m[key] != base else "single-task"
            lines.append(f"| {t.name} | {metric} | {_num(m[key])} | {_num(base)} | {better} |")
    lines += [
        "",
        f"Test objective (mean task loss, lower is better): {_num(m.get('test/objective'))}.",
        "",
        "## Chosen by the search",
    ]
    if facts.best_trial is not None:
        lines.append(f"Best trial: #{facts.best_trial}.")
    lines += ["", "| parameter | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in sorted(facts.best_params.items())]
    lines += [
        "",
        "## Provenance",
        f"- training run: [{facts.run_id}]({facts.run_url}) in experiment `{facts.experiment}`",
        "",
    ]
    return "\n".join(lines)


def _dm(metrics: dict[str, float], split: str) -> str:
    value = metrics.get(f"{split}/delta_m")
    return "–" if value is None else f"{value:+.2f}%"


def card_facts(
    cfg: ExperimentConfig,
    data: PreparedData,
    metrics: dict[str, float],
    run_id: str,
    run_url: str,
    best_trial: int | None = None,
) -> CardFacts:
    """The facts of a card for the model trained with ``cfg`` (the best trial's) on ``data``."""
    return CardFacts(
        model_name=cfg.tracking.registered_model,
        experiment=cfg.tracking.experiment,
        run_id=run_id,
        run_url=run_url,
        data_source=data.source,
        fingerprint=data.fingerprint,
        n_rows=data.n_rows,
        features=list(data.preprocessor.features),
        tasks=list(data.tasks),
        metrics=dict(metrics),
        best_params={k: v for k, v in flat_params(cfg).items() if k.startswith(CHOSEN)},
        best_trial=best_trial,
        id_column=cfg.data.id_column,
    )
