"""Executable end events: user code run when a pipeline (or subprocess) reaches its end.

Subclass :class:`ExecutableEndEvent`, give it a unique ``code`` and implement ``execute``;
defining the class registers it. In a tree the end event's ``type`` is the code. This is the
plugin base; the builder element of the same name lives in :mod:`culm.builder`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from culm.components.registry import CodeLibrary, PluginDefinitionError, registration_ignored
from culm.errors import PluginConflictError, PluginNotFoundError

__all__ = [
    "EndEventConflictError",
    "EndEventDefinitionError",
    "EndEventNotFoundError",
    "ExecutableEndEvent",
    "library",
]


class EndEventConflictError(PluginConflictError):
    """A different end event class already uses a code."""


class EndEventNotFoundError(PluginNotFoundError):
    """No executable end event is registered under a code."""


class EndEventDefinitionError(PluginDefinitionError):
    """An end event class lacks a usable ``code``."""


#: Every registered end event class, by code: ``library.get(code)``, ``has``, ``codes``.
library: CodeLibrary[type[ExecutableEndEvent]] = CodeLibrary(
    "end event", EndEventConflictError, EndEventNotFoundError
)


class ExecutableEndEvent:
    """Base of every executable end event.

    Class attributes:
        code: Unique identity, the end event's ``type`` in a tree.

    The engine builds a new instance (no arguments) for each run of the end event. An exception
    from :meth:`execute` fails the end event, which can then be retried.
    """

    code: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not registration_ignored(cls):
            library.register_class(cls, EndEventDefinitionError)

    def execute(self, in_subprocess: bool, root_pipeline_id: str, current_pipeline_id: str) -> None:
        """Runs at the end of a pipeline.

        Args:
            in_subprocess: Whether the ending pipeline is a subprocess of another.
            root_pipeline_id: Id of the outermost pipeline.
            current_pipeline_id: Id of the pipeline that is ending.
        """
        raise NotImplementedError(f"{type(self).__qualname__} must implement execute()")
