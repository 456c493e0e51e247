"""mtl_core: multi-task learning with hard parameter sharing.

A plain library: data preparation, the shared-trunk model, the weighted and
regularised loss, the training loop, evaluation and single-task baselines.
It imports neither Prefect nor MLflow; ``search`` (Optuna) and ``tracking``
(MLflow) are the only modules that talk to those services.
"""

from mtl_core.errors import ConfigError, DataError, MTLError, NonFiniteLossError, SearchError

__all__ = ["ConfigError", "DataError", "MTLError", "NonFiniteLossError", "SearchError"]
