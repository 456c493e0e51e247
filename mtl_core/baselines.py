"""Single-task baselines: the same representation, architecture and budget, one task at a time.

They answer the question users ask first, "did sharing help?", through
:func:`mtl_core.metrics.delta_m`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtl_core.config import ExperimentConfig
from mtl_core.data import PreparedData
from mtl_core.metrics import evaluate
from mtl_core.train import train_from_config


@dataclass
class BaselineResult:
    """Metrics of every single-task model, merged under the usual keys."""

    metrics: dict[str, float]
    epochs: dict[str, int]


def single_task_config(cfg: ExperimentConfig, task: str) -> ExperimentConfig:
    """``cfg`` reduced to one task: weight 1 and the ``static`` weighting, all else kept.

    Penalties, representation, architecture, optimiser and budget stay the
    multi-task model's, so that the comparison isolates sharing.
    """
    raw = cfg.model_dump()
    raw["data"]["tasks"] = [t for t in raw["data"]["tasks"] if t["name"] == task]
    raw["loss"].update(weights=None, weighting="static")
    return ExperimentConfig.model_validate(raw)


def single_task_baselines(
    cfg: ExperimentConfig, data: PreparedData, device: str | None = None
) -> BaselineResult:
    """Train one model per task through :func:`~mtl_core.train.train_from_config`.

    Args:
        cfg: The multi-task experiment (usually the best trial's).
        data: Prepared data in ``cfg.features``' representation.
        device: Overrides ``cfg.train.device``.

    Returns:
        ``{split}/{task}/{metric}`` for ``val`` and ``test``, one task per model,
        plus the epochs each baseline trained.
    """
    metrics: dict[str, float] = {}
    epochs: dict[str, int] = {}
    device = device or cfg.train.device
    for task in data.tasks:
        sub = data.only(task.name)
        model, result = train_from_config(single_task_config(cfg, task.name), sub, device=device)
        epochs[task.name] = result.epochs_run
        for key, value in evaluate(model, sub, device=device).items():
            if not key.endswith("/objective"):
                metrics[key] = value
    return BaselineResult(metrics, epochs)
