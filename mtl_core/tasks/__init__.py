"""Task types: binary, multi-class and regression, each a :class:`Task` in its own file.

To add a type, copy a neighbour (``regression.py`` is the shortest), register it
with ``@TASK_TYPES.register("name")``, and import it below.
"""

from mtl_core.tasks import binary, multiclass, regression  # noqa: F401  (registers them)
from mtl_core.tasks.base import (
    TASK_TYPES,
    Task,
    metric_direction,
    sigmoid,
    softmax,
    task_from_dict,
)

__all__ = ["TASK_TYPES", "Task", "metric_direction", "sigmoid", "softmax", "task_from_dict"]
