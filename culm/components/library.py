"""The component library: every registered component, by code and version.

This module *is* the library, so that ``from culm.components import library`` followed by
``library.get("my_code")`` and ``("my_code", "legacy") in library`` both work. Components
register themselves when their class is defined (see :mod:`culm.components.component`).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any, cast

from culm.components.registry import PluginRegistry
from culm.errors import PluginConflictError, PluginNotFoundError

if TYPE_CHECKING:
    from culm.components.component import Component
    from culm.components.service import Service

__all__ = [
    "DEFAULT_VERSION",
    "ComponentConflictError",
    "ComponentLibrary",
    "ComponentNotFoundError",
    "all",
    "codes",
    "get",
    "has",
    "new_service",
    "register",
    "unregister",
    "versions",
]

#: The version of a component that does not declare one.
DEFAULT_VERSION = "legacy"


class ComponentConflictError(PluginConflictError):
    """A different component class already holds a (code, version)."""


class ComponentNotFoundError(PluginNotFoundError):
    """No component is registered under a (code, version)."""


class _ComponentRegistry(PluginRegistry[tuple[str, str], "type[Component]"]):
    def describe(self, key: tuple[str, str]) -> str:
        return f"component {key[0]!r} version {key[1]!r}"


class ComponentLibrary:
    """Registered component classes, keyed by ``(code, version)``; safe to use from any thread."""

    def __init__(self) -> None:
        self._registry = _ComponentRegistry("component", ComponentConflictError, ComponentNotFoundError)

    def register(self, cls: type[Component]) -> None:
        """Registers a component class under its ``(code, version)``.

        Raises:
            ComponentConflictError: a different class (another module or qualified name) holds it.
        """
        # ComponentMeta has already checked that `code` is a non-empty str.
        self._registry.register((cast(str, cls.code), cls.version), cls)

    def get(self, code: str, version: str | None = None) -> type[Component]:
        """Returns the component class for a code and version (None means ``"legacy"``).

        Raises:
            ComponentNotFoundError: nothing is registered under that code and version.
        """
        return self._registry.get((code, version or DEFAULT_VERSION))

    def has(self, code: str, version: str | None = None) -> bool:
        """Whether a component is registered under a code and version (None means ``"legacy"``)."""
        return self._registry.has((code, version or DEFAULT_VERSION))

    def codes(self) -> list[str]:
        """Returns every registered code, sorted, each once."""
        return sorted({code for code, _ in self._registry.keys()})

    def versions(self, code: str) -> list[str]:
        """Returns the registered versions of a code, sorted; empty for an unknown code."""
        return sorted(version for known, version in self._registry.keys() if known == code)

    def all(self) -> list[type[Component]]:
        """Returns every registered component class, in registration order."""
        return self._registry.all()

    def new_service(self, code: str, version: str | None = None) -> Service:
        """Returns a fresh instance of the service bound to a component.

        Raises:
            ComponentNotFoundError: nothing is registered under that code and version.
        """
        return self.get(code, version)().service()

    def unregister(self, code: str, version: str | None = None) -> type[Component] | None:
        """Removes a component and returns it, or None if it was not registered (for tests)."""
        return self._registry.unregister((code, version or DEFAULT_VERSION))

    def __contains__(self, key: object) -> bool:
        # (code, None) means the default version, as get(code, None) does
        if isinstance(key, tuple) and len(key) == 2 and key[1] is None:
            key = (key[0], DEFAULT_VERSION)
        return key in self._registry

    def __len__(self) -> int:
        return len(self._registry)

    # bamboo-pipeline's ``ComponentLibrary`` class methods, on the library culm registers into, so
    # that code calling ``ComponentLibrary.get_component_class(code)`` keeps working.
    @staticmethod
    def get_component_class(component_code: str, version: str | None = None) -> type[Component]:
        """bamboo's name for :func:`get` (raises :class:`ComponentNotFoundError`)."""
        return _library.get(component_code, version)

    @staticmethod
    def get_component(component_code: str, data_dict: dict[str, Any], version: str | None = None) -> Component:
        """An instance of the component class of ``component_code`` describing ``data_dict``."""
        return _library.get(component_code, version)(data_dict)

    @staticmethod
    def component_list() -> list[type[Component]]:
        """bamboo's name for :func:`all`."""
        return _library.all()


_library = ComponentLibrary()

register = _library.register
get = _library.get
has = _library.has
codes = _library.codes
versions = _library.versions
all = _library.all  # noqa: A001 - the contract names it `all`
new_service = _library.new_service
unregister = _library.unregister


class _LibraryModule(types.ModuleType):
    """Gives this module the container protocol of the library it wraps."""

    def __contains__(self, key: object) -> bool:
        return key in _library

    def __len__(self) -> int:
        return len(_library)


# Dunder methods are looked up on the type, so a module-level `__contains__` would be ignored;
# assigning a ModuleType subclass to the module's `__class__` is supported since Python 3.5.
sys.modules[__name__].__class__ = _LibraryModule
