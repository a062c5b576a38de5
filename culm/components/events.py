"""Executable end events: user code run when a pipeline (or subprocess) reaches its end.

Subclass :class:`ExecutableEndEvent`, give it a unique ``code`` and implement ``execute``;
defining the class registers it. In a tree the end event's ``type`` is the code. This is the
plugin base; the builder element of the same name lives in :mod:`culm.builder`.

bamboo's way works too: a subclass without ``code`` registers nothing when it is defined, and
``FlowNodeClsFactory.register_node(key, cls)`` registers it under ``key`` (bamboo's
``pipeline.core.flow.FlowNodeClsFactory``; pair it with :func:`culm.validator.add_sink_type`
as bamboo's docs do)::

    class CustomExecutableEndEvent(ExecutableEndEvent):
        def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
            ...

    FlowNodeClsFactory.register_node("CustomExecutableEndEvent", CustomExecutableEndEvent)
"""

from __future__ import annotations

from typing import Any, ClassVar

from culm.components.registry import CodeLibrary, PluginDefinitionError, registration_ignored
from culm.errors import PluginConflictError, PluginNotFoundError

__all__ = [
    "FlowNodeClsFactory",
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
        code: Unique identity, the end event's ``type`` in a tree. A class without one is
            registered later, under a key of its choice, by :meth:`FlowNodeClsFactory.register_node`.

    The engine builds a new instance (no arguments) for each run of the end event. An exception
    from :meth:`execute` fails the end event, which can then be retried.
    """

    code: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # No code: bamboo's way, registered by FlowNodeClsFactory.register_node.
        if not registration_ignored(cls) and cls.__dict__.get("code") is not None:
            library.register_class(cls, EndEventDefinitionError)

    def execute(self, in_subprocess: bool, root_pipeline_id: str, current_pipeline_id: str) -> None:
        """Runs at the end of a pipeline.

        Args:
            in_subprocess: Whether the ending pipeline is a subprocess of another.
            root_pipeline_id: Id of the outermost pipeline.
            current_pipeline_id: Id of the pipeline that is ending.
        """
        raise NotImplementedError(f"{type(self).__qualname__} must implement execute()")


class FlowNodeClsFactory:
    """bamboo's registry of flow node classes, for custom end events (``pipeline.core.flow``)."""

    @classmethod
    def register_node(cls, key: str, node_cls: type) -> None:
        """Register an executable end event class under ``key``, the end event's ``type`` in a tree.

        Raises:
            EndEventDefinitionError: ``key`` is not a non-empty str, or ``node_cls`` has no
                ``execute`` method.
            EndEventConflictError: a different class already uses ``key``.
        """
        if not isinstance(key, str) or not key:
            raise EndEventDefinitionError(f"end event key must be a non-empty str, got {key!r}")
        if not isinstance(node_cls, type) or not callable(getattr(node_cls, "execute", None)):
            raise EndEventDefinitionError(
                f"end event {key!r}: {node_cls!r} must be a class with an "
                "execute(in_subprocess, root_pipeline_id, current_pipeline_id) method"
            )
        library.register(key, node_cls)

    @classmethod
    def get_node_cls(cls, key: str) -> type:
        """The class registered under ``key``.

        Raises:
            EndEventNotFoundError: nothing is registered under ``key``.
        """
        return library.get(key)
