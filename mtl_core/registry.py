"""Registries: plain dicts filled by a decorator, looked up by a short lowercase name.

Task types, architectures and weighting methods each keep one :class:`Registry`.
A member registers itself in its own file (``@TASK_TYPES.register("binary")``), so
adding one is one file plus one import line in its package's ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mtl_core.errors import ConfigError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A name -> member mapping whose unknown names raise an error listing the known ones.

    Args:
        what: What the members are, for error messages (``"architecture"``).
        key: The config key that selects a member (``"model.arch"``).
    """

    def __init__(self, what: str, key: str) -> None:
        super().__init__()
        self.what, self.key = what, key

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a member under ``name``."""

        def add(member: T) -> T:
            if name in self:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            self[name] = member
            return member

        return add

    def lookup(self, name: str) -> T:
        """The member called ``name``; an unknown name is a ConfigError naming the known ones."""
        try:
            return self[name]
        except KeyError:
            raise ConfigError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The one-line message for an unknown name."""
        return f"{self.key}: unknown {self.what} '{name}'; known: {sorted(self)}"
