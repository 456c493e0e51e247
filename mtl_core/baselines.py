"""Single-task baselines: the same trunk and head trained on one task at a time.

They answer the question users ask first, "did sharing help?", through
:func:`mtl_core.metrics.delta_m`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtl_core.config import ModelConfig, TrainConfig
from mtl_core.data import PreparedData
from mtl_core.losses import MultiTaskLoss
from mtl_core.metrics import evaluate
from mtl_core.model import build_model
from mtl_core.train import fit


@dataclass
class BaselineResult:
    """Metrics of every single-task model, merged under the usual keys."""

    metrics: dict[str, float]
    epochs: dict[str, int]


def single_task_baselines(
    data: PreparedData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    l1: float = 0.0,
    l2: float = 0.0,
    device: str = "auto",
) -> BaselineResult:
    """Train one model per task with the multi-task model's architecture and budget.

    Each baseline has the same trunk and head as the multi-task model, the
    same optimiser, epochs and early stopping, and weight 1 on its only task.

    Returns:
        ``{split}/{task}/{metric}`` for ``val`` and ``test``, one task per model,
        plus the epochs each baseline trained.
    """
    metrics: dict[str, float] = {}
    epochs: dict[str, int] = {}
    for spec in data.tasks:
        sub = data.only(spec.name)
        model = build_model(model_cfg, data.preprocessor.n_inputs, sub.out_dims, train_cfg.seed)
        loss = MultiTaskLoss({spec.name: spec.type}, {spec.name: 1.0}, l1, l2)
        result = fit(model, sub, loss, train_cfg, device=device)
        epochs[spec.name] = result.epochs_run
        for key, value in evaluate(model, sub, device=device).items():
            if not key.endswith("/objective"):
                metrics[key] = value
    return BaselineResult(metrics, epochs)
