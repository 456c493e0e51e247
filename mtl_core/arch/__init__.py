"""Architectures, selected by ``model.arch``; each maps encoded inputs to ``{task: outputs}``.

To add one, copy ``shared_bottom.py``: subclass :class:`Architecture`, register it
with ``@ARCHS.register("name")``, and import the file below (one line each).
"""

from mtl_core.arch import (
    mmoe,  # noqa: F401  (registers it)
    ple,  # noqa: F401  (registers it)
    shared_bottom,  # noqa: F401  (registers it)
)
from mtl_core.arch.base import ACTIVATIONS, ARCHS, Architecture, mlp, tower

__all__ = ["ACTIVATIONS", "ARCHS", "Architecture", "mlp", "tower"]
