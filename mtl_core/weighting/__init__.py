"""Weighting methods, selected by ``loss.weighting``: how task losses become the update.

To add one, copy ``static.py``: subclass :class:`Weighting`, register it with
``@WEIGHTINGS.register("name")``, and import the file below.
"""

from mtl_core.weighting import static  # noqa: F401  (registers it)
from mtl_core.weighting.base import WEIGHTINGS, Weighting

__all__ = ["WEIGHTINGS", "Weighting"]
