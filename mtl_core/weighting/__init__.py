"""Weighting methods, selected by ``loss.weighting``: how task losses become the update.

To add one, copy ``static.py`` (or, for a torchjd scalarizer or aggregator, ``dwa.py``
or ``pcgrad.py``): subclass :class:`Weighting`, register it with
``@WEIGHTINGS.register("name")``, and import the file below. Its options, if any,
are ``LossConfig`` fields named ``{name}_{option}``.
"""

from mtl_core.weighting import (  # noqa: F401  (each registers itself)
    dwa,
    famo,
    pcgrad,
    static,
    uncertainty,
    upgrad,
)
from mtl_core.weighting.base import WEIGHTINGS, Weighting

__all__ = ["WEIGHTINGS", "Weighting"]
