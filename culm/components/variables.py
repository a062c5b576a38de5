"""Lazy variables: context values computed by user code when a node needs them.

Subclass :class:`LazyVariable`, give it a unique ``code`` and implement ``get_value``; defining
the class registers it. In a tree the variable is ``{"type": "lazy", "custom_type": CODE,
"value": ...}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from culm.components.registry import CodeLibrary, PluginDefinitionError, registration_ignored
from culm.errors import PluginConflictError, PluginNotFoundError

__all__ = [
    "LazyVariable",
    "VariableConflictError",
    "VariableDefinitionError",
    "VariableNotFoundError",
    "library",
]


class VariableConflictError(PluginConflictError):
    """A different lazy variable class already uses a code."""


class VariableNotFoundError(PluginNotFoundError):
    """No lazy variable is registered under a code."""


class VariableDefinitionError(PluginDefinitionError):
    """A lazy variable class lacks a usable ``code``."""


#: Every registered lazy variable class, by code: ``library.get(code)``, ``has``, ``codes``.
library: CodeLibrary[type[LazyVariable]] = CodeLibrary(
    "lazy variable", VariableConflictError, VariableNotFoundError
)


class LazyVariable:
    """Base of every lazy variable.

    Class attributes:
        code: Unique identity, the ``custom_type`` of the variable in a tree.
        name, type, tag, meta_tag, form: Presentation metadata, unused by the engine.

    Args:
        value: The configured value, already rendered.
        pipeline_data: The root pipeline's data (its inputs).
        inner_loop: ``_inner_loop`` of the node being rendered (-1 outside a node).
        key: The context key the variable is bound to, for messages.
    """

    code: ClassVar[str | None] = None
    name: ClassVar[str] = ""
    type: ClassVar[str] = "general"
    tag: ClassVar[str | None] = None
    meta_tag: ClassVar[str | None] = None
    form: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not registration_ignored(cls):
            library.register_class(cls, VariableDefinitionError)

    def __init__(
        self,
        value: Any = None,
        pipeline_data: dict[str, Any] | None = None,
        inner_loop: int = -1,
        key: str | None = None,
    ) -> None:
        self.value = value
        self.pipeline_data = pipeline_data if pipeline_data is not None else {}
        self.inner_loop = inner_loop
        self.key = key

    def get_value(self) -> Any:
        """Returns the variable's value; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement get_value()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, value={self.value!r})"
