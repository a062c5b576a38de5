"""The registry shared by the three plugin kinds: components, lazy variables and end events.

Each kind keeps its classes in one :class:`PluginRegistry` keyed by its identity (a code, or a
code and a version). Registration happens as a side effect of defining a class, so the rules
live here once:

* a *different* class for a taken key is a conflict, reported with both class names;
* the *same* class defined again (same module and qualified name, as when a module is
  reloaded) silently replaces the old one, so reloading never breaks a running process;
* a class, or the module it is defined in, may opt out with ``__register_ignore__ = True``;
* a class flagged ``__culm_yields__ = True`` (the demo components culm ships) gives way to any
  other class claiming its key, and never displaces one.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from culm.errors import CulmError, PluginConflictError, PluginNotFoundError

__all__ = [
    "CodeLibrary",
    "PluginDefinitionError",
    "PluginRegistry",
    "module_attr",
    "qualified_name",
    "registration_ignored",
]

K = TypeVar("K", bound=Hashable)
P = TypeVar("P", bound=type)


class PluginDefinitionError(CulmError, ValueError):
    """A plugin class is missing a required attribute or has one of the wrong type (a
    ``ValueError`` too, as bamboo's metaclasses raise for a component without a name or code)."""


def qualified_name(cls: type) -> str:
    """Returns ``module.QualifiedName`` of a class, the name used in every registry message."""
    return f"{cls.__module__}.{cls.__qualname__}"


def module_attr(cls: type, name: str, default: Any = None) -> Any:
    """Reads a module-level attribute of the module a class is defined in.

    The module is still executing while its classes are defined, but it is already in
    ``sys.modules``, so attributes assigned above the class are visible. Classes made with
    ``type()`` may name a module that does not exist; they get ``default``.
    """
    module = sys.modules.get(cls.__module__)
    return getattr(module, name, default) if module is not None else default


def registration_ignored(cls: type) -> bool:
    """Whether a class opted out of registration, by itself or through its module."""
    # Only the class's own namespace counts: a concrete subclass of an ignored base registers.
    if cls.__dict__.get("__register_ignore__", False):
        return True
    return bool(module_attr(cls, "__register_ignore__", False))


def _same_definition(old: type, new: type) -> bool:
    return old is new or qualified_name(old) == qualified_name(new)


def _yields(cls: type) -> bool:
    # The class's own namespace only: a user's subclass of a demo component does not yield.
    return bool(cls.__dict__.get("__culm_yields__", False))


class PluginRegistry(Generic[K, P]):
    """A thread-safe map from a plugin key to the class registered under it.

    Args:
        kind: What is registered, for messages (``"component"``, ``"lazy variable"``).
        conflict_error: Raised when a different class claims a taken key.
        not_found_error: Raised by :meth:`get` for an unknown key.
    """

    def __init__(
        self,
        kind: str,
        conflict_error: type[PluginConflictError],
        not_found_error: type[PluginNotFoundError],
    ) -> None:
        self.kind = kind
        self._conflict_error = conflict_error
        self._not_found_error = not_found_error
        self._lock = threading.Lock()
        self._classes: dict[K, P] = {}

    def describe(self, key: K) -> str:
        """Returns how a key is shown in messages; subclasses with compound keys override it."""
        return f"{self.kind} {key!r}"

    def register(self, key: K, cls: P) -> None:
        """Registers ``cls`` under ``key``.

        Raises:
            PluginConflictError: (the kind's subclass) a different class holds ``key``.
        """
        with self._lock:
            old = self._classes.get(key)
            if old is not None and not _same_definition(old, cls) and _yields(cls) and not _yields(old):
                return
            if old is not None and not _same_definition(old, cls) and not _yields(old):
                raise self._conflict_error(
                    f"{self.describe(key)} is already registered by {qualified_name(old)}; "
                    f"{qualified_name(cls)} cannot register under it"
                )
            self._classes[key] = cls

    def get(self, key: K) -> P:
        """Returns the class registered under ``key``.

        Raises:
            PluginNotFoundError: (the kind's subclass) nothing is registered under ``key``.
        """
        with self._lock:
            cls = self._classes.get(key)
        if cls is None:
            raise self._not_found_error(f"no {self.describe(key)} is registered")
        return cls

    def has(self, key: K) -> bool:
        """Whether a class is registered under ``key``."""
        with self._lock:
            return key in self._classes

    def keys(self) -> list[K]:
        """Returns every registered key, in registration order."""
        with self._lock:
            return list(self._classes)

    def all(self) -> list[P]:
        """Returns every registered class, in registration order."""
        with self._lock:
            return list(self._classes.values())

    def unregister(self, key: K) -> P | None:
        """Removes and returns the class under ``key``, or ``None`` if there was none (for tests)."""
        with self._lock:
            return self._classes.pop(key, None)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._classes

    def __len__(self) -> int:
        with self._lock:
            return len(self._classes)


class CodeLibrary(PluginRegistry[str, P]):
    """A registry keyed by a plain code, as used by lazy variables and end events."""

    def codes(self) -> list[str]:
        """Returns every registered code, sorted."""
        return sorted(self.keys())

    def register_class(self, cls: P, definition_error: type[PluginDefinitionError]) -> None:
        """Validates the ``code`` of a newly defined class and registers it.

        Raises:
            PluginDefinitionError: (``definition_error``) ``code`` is missing or not a non-empty str.
            PluginConflictError: a different class already uses the code.
        """
        code = getattr(cls, "code", None)
        if not isinstance(code, str) or not code:
            raise definition_error(
                f"{self.kind} class {qualified_name(cls)} must define a non-empty str `code`"
                " (or set __register_ignore__ = True to keep it abstract)"
            )
        self.register(code, cls)
