"""What binary and multi-class tasks share: a fixed list of classes and stratified splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mtl_core.errors import DataError
from mtl_core.tasks.base import Task


def _sort_key(value: Any) -> tuple[str, Any]:
    return (str(type(value)), value)


@dataclass
class ClassificationTask(Task):
    """A task whose target is one of a fixed list of classes, learned from the labelled rows."""

    classes: list = field(default_factory=list)

    min_classes: ClassVar[int] = 2
    max_classes: ClassVar[int | None] = None

    @classmethod
    def from_column(cls, name: str, column: str, values: pd.Series, source: str) -> Task:
        """Learn the classes; fewer than two (or more than the type allows) is a DataError."""
        classes = sorted(values.dropna().unique().tolist(), key=_sort_key)
        where = f"{source}: {cls.type} target column '{column}' (task '{name}')"
        if len(classes) < cls.min_classes:
            raise DataError(
                f"{where} has {len(classes)} class(es) {classes}; it needs at least "
                f"{cls.min_classes}"
            )
        if cls.max_classes is not None and len(classes) > cls.max_classes:
            raise DataError(
                f"{where} has {len(classes)} classes {classes[:5]}; use type 'multiclass'"
            )
        return cls(name, column, classes=classes)

    def stratify_labels(self, values: pd.Series) -> pd.Series:
        """The class as a string, with missing labels as their own stratum."""
        return values.astype(object).where(values.notna(), "<missing>").astype(str)

    def encode(self, values: pd.Series) -> np.ndarray:
        """Class -> its index as float32; missing or unknown classes are NaN."""
        lookup = {c: float(i) for i, c in enumerate(self.classes)}
        return values.map(lookup).to_numpy(dtype=np.float32, na_value=np.nan)
