"""The service a component runs, the data it sees and how often it is polled.

A :class:`Service` subclass holds the business logic of one activity: ``execute`` once, then,
for services that need it, ``schedule`` once per poll or callback. The engine builds a fresh
instance for every call, so a service keeps state between calls in ``data.outputs``, never in
its own attributes.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any, ClassVar, cast

from culm._printable import engine_logger
from culm.components import io as _io

__all__ = [
    "AbstractIntervalGenerator",
    "DataObject",
    "DefaultIntervalGenerator",
    "HOOK_NAMES",
    "LinearIntervalGenerator",
    "NullIntervalGenerator",
    "RESERVED_OUTPUT_KEYS",
    "SCHEDULE_CALLBACK",
    "SCHEDULE_MULTIPLE_CALLBACK",
    "SCHEDULE_POLL",
    "Service",
    "SquareIntervalGenerator",
    "StaticIntervalGenerator",
]

SCHEDULE_POLL = "poll"
SCHEDULE_CALLBACK = "callback"
SCHEDULE_MULTIPLE_CALLBACK = "multiple_callback"

#: Output keys the engine writes itself on every execute and schedule.
RESERVED_OUTPUT_KEYS = frozenset({"_result", "_loop", "_inner_loop"})

_DEFAULT_LOGGER = engine_logger("culm.component")


# --------------------------------------------------------------------------- interval generators


class AbstractIntervalGenerator:
    """Produces the wait, in seconds, before each poll of a polling service.

    ``count`` is the number of times :meth:`next` was called. The engine persists the poll count
    and writes it back into ``count`` before calling :meth:`next`, because each poll runs on a
    fresh service instance. Subclasses call ``super().next()`` first, then derive the wait.
    """

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> float | int | None:
        """Advances ``count``; subclasses return the wait before the next poll."""
        self.count += 1
        return None


class DefaultIntervalGenerator(AbstractIntervalGenerator):
    """Waits ``count ** 2`` seconds: quick first polls, backing off quadratically."""

    def next(self) -> int:
        """Returns the square of the advanced count."""
        super().next()
        return self.count**2


class SquareIntervalGenerator(DefaultIntervalGenerator):
    """Same as :class:`DefaultIntervalGenerator`; the name says what it does."""


class StaticIntervalGenerator(AbstractIntervalGenerator):
    """Waits the same number of seconds before every poll.

    Args:
        seconds: The wait in seconds (the contract's name).
        interval: ``seconds`` under bamboo's name.

    Raises:
        TypeError: neither or both of ``seconds`` and ``interval`` given.
    """

    def __init__(self, seconds: float | None = None, *, interval: float | None = None) -> None:
        super().__init__()
        if (seconds is None) == (interval is None):
            raise TypeError("StaticIntervalGenerator takes the wait once: StaticIntervalGenerator(seconds) "
                            "or StaticIntervalGenerator(interval=seconds)")
        self.interval: float = seconds if seconds is not None else cast(float, interval)

    def next(self) -> float:
        """Returns the fixed interval."""
        super().next()
        return self.interval


class NullIntervalGenerator(AbstractIntervalGenerator):
    """Counts polls and names no wait, as bamboo's does: ``next()`` returns None, which the engine
    takes as "poll again at once" (bamboo hands None to Celery as no countdown). A base for custom
    generators."""


class LinearIntervalGenerator(AbstractIntervalGenerator):
    """bamboo's placeholder for a linear back-off: like :class:`NullIntervalGenerator` it counts
    polls and returns None (poll again at once). Subclass it and return ``self.count`` after
    ``super().next()`` for waits of 1, 2, 3... seconds, as bamboo's component guide does."""


# --------------------------------------------------------------------------- data object


class _AttrDict(dict[str, Any]):
    """A dict whose keys are also readable and writable as attributes."""

    def __getattr__(self, name: str) -> Any:
        # Dunder lookups (copy, pickle protocols) must see a normal miss, not a stored key.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"no key {name!r}") from None


class DataObject:
    """The inputs and outputs of one node, as handed to ``execute`` and ``schedule``.

    ``inputs`` and ``outputs`` are dicts that also allow attribute access
    (``data.inputs.url`` and ``data.inputs["url"]``). A key named like a dict method
    (``items``, ``keys``, ``get``, ``update``...) must be read with item access, because the
    attribute finds the method.

    Args:
        inputs: The rendered inputs; copied (shallowly).
        outputs: Outputs of earlier calls, empty for a first execute; copied (shallowly).
    """

    def __init__(self, inputs: dict[str, Any], outputs: dict[str, Any] | None = None) -> None:
        if not isinstance(inputs, dict):
            raise TypeError(f"DataObject inputs must be a dict, not {type(inputs).__name__}")
        self.inputs = _AttrDict(inputs)
        self.outputs = _AttrDict(outputs or {})

    def get_inputs(self) -> dict[str, Any]:
        """Returns the inputs dict itself (changes are visible to the node)."""
        return self.inputs

    def get_outputs(self) -> dict[str, Any]:
        """Returns the outputs dict itself (changes are visible to the node)."""
        return self.outputs

    def get_one_of_inputs(self, key: str, default: Any = None) -> Any:
        """Returns one input, or ``default`` when it is absent."""
        return self.inputs.get(key, default)

    def get_one_of_outputs(self, key: str, default: Any = None) -> Any:
        """Returns one output, or ``default`` when it is absent."""
        return self.outputs.get(key, default)

    def set_outputs(self, key: str, value: Any) -> bool:
        """Sets one output; returns True."""
        self.outputs[key] = value
        return True

    def reset_outputs(self, outputs: dict[str, Any]) -> bool:
        """Replaces all outputs with a copy of ``outputs``; returns True."""
        self.outputs = _AttrDict(outputs)
        return True

    def update_outputs(self, outputs: dict[str, Any]) -> None:
        """Merges ``outputs`` into the current outputs."""
        self.outputs.update(outputs)

    def inputs_copy(self) -> dict[str, Any]:
        """Returns a deep copy of the inputs."""
        return copy.deepcopy(dict(self.inputs))

    def outputs_copy(self) -> dict[str, Any]:
        """Returns a deep copy of the outputs."""
        return copy.deepcopy(dict(self.outputs))

    def override_inputs(self, inputs: dict[str, Any]) -> None:
        """Replaces all inputs with a copy of ``inputs``."""
        self.inputs = _AttrDict(inputs)

    def override_outputs(self, outputs: dict[str, Any]) -> None:
        """Replaces all outputs with a copy of ``outputs``."""
        self.outputs = _AttrDict(outputs)

    def serializer(self) -> str:
        """Returns ``{"inputs": ..., "outputs": ...}`` as a JSON string."""
        return json.dumps({"inputs": self.inputs, "outputs": self.outputs})

    def __repr__(self) -> str:
        return f"DataObject(inputs={dict(self.inputs)!r}, outputs={dict(self.outputs)!r})"


# --------------------------------------------------------------------------- service

#: Every lifecycle hook a service has, in no particular order.
HOOK_NAMES = (
    "pre_resume_node",
    "post_resume_node",
    "pre_pause_node",
    "post_pause_node",
    "pre_retry_node",
    "post_retry_node",
    "pre_skip_node",
    "post_skip_node",
    "pre_forced_fail_activity",
    "post_forced_fail_activity",
    "pre_callback",
    "post_callback",
    "node_execute_fail",
    "node_schedule_fail",
    "node_execute_exception",
    "node_schedule_exception",
    "node_enter",
    "node_finish",
    "pre_execute",
    "post_execute",
    "pre_schedule",
    "post_schedule",
)


class _Hooks:
    """Lifecycle hooks, all no-ops returning True; see spec section 8.3 for when each fires.

    They are only dispatched to services with ``__need_run_hook__ = True``. Each is called as
    ``hook(data, parent_data)``, with ``callback_data=<payload>`` added only when there is one
    (the callback, schedule and ``node_finish`` hooks of a callback node) and the hook accepts it,
    so hooks written as bamboo's docs write them, ``(self, data, parent_data)``, run. When an error
    is ignored (``error_ignorable``), ``node_finish`` follows ``node_execute_exception`` /
    ``node_schedule_exception`` and no ``*_fail`` hook runs. An exception in a hook is logged and
    ignored.
    """

    def pre_resume_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Defined for compatibility; the engine never dispatches it."""
        return True

    def post_resume_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Defined for compatibility; the engine never dispatches it."""
        return True

    def pre_pause_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Before a reached node's pipeline is paused."""
        return True

    def post_pause_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """After a reached node's pipeline is paused."""
        return True

    def pre_retry_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Before the node is retried."""
        return True

    def post_retry_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """After the node is retried."""
        return True

    def pre_skip_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Before the node is skipped."""
        return True

    def post_skip_node(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """After the node is skipped."""
        return True

    def pre_forced_fail_activity(
        self, data: DataObject, parent_data: DataObject, callback_data: Any = None
    ) -> bool:
        """Before the node is forced to fail."""
        return True

    def post_forced_fail_activity(
        self, data: DataObject, parent_data: DataObject, callback_data: Any = None
    ) -> bool:
        """After the node is forced to fail."""
        return True

    def pre_callback(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Before a callback is accepted for the node."""
        return True

    def post_callback(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """After a callback is accepted for the node."""
        return True

    def node_execute_fail(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """When ``execute`` failed and the failure is not ignored."""
        return True

    def node_schedule_fail(
        self, data: DataObject, parent_data: DataObject, callback_data: Any = None
    ) -> bool:
        """When ``schedule`` failed and the failure is not ignored."""
        return True

    def node_execute_exception(
        self, data: DataObject, parent_data: DataObject, callback_data: Any = None
    ) -> bool:
        """When ``execute`` raised."""
        return True

    def node_schedule_exception(
        self, data: DataObject, parent_data: DataObject, callback_data: Any = None
    ) -> bool:
        """When ``schedule`` raised."""
        return True

    def node_enter(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """When the engine reaches the node, before ``pre_execute``."""
        return True

    def node_finish(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """When the node finishes."""
        return True

    def pre_execute(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Just before ``execute``."""
        return True

    def post_execute(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """After a successful ``execute``."""
        return True

    def pre_schedule(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """Just before ``schedule``."""
        return True

    def post_schedule(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool:
        """After a successful ``schedule``."""
        return True


class Service(_Hooks):
    """Base of every service; subclass it and implement :meth:`execute`.

    Class attributes:
        __need_schedule__: The node has a schedule phase after ``execute``.
        __multi_callback_enabled__: Each of several callbacks runs ``schedule``; the node finishes
            when the service calls :meth:`finish_schedule`.
        __need_run_hook__: The engine calls the lifecycle hooks.
        interval: An interval generator makes the schedule phase a poll loop; deep-copied per
            instance so instances never share a counter.

    Runtime attributes set by the engine (``None`` until then): ``id``, ``version``,
    ``root_pipeline_id``, ``top_pipeline_id``, ``loop``, ``inner_loop`` and ``logger``; during a
    ``schedule`` call also ``callback_data`` (the same payload as the argument, which bamboo's
    component guide reads as ``self.callback_data``).

    Args:
        name: Optional display name.
    """

    __need_schedule__: ClassVar[bool] = False
    __multi_callback_enabled__: ClassVar[bool] = False
    __need_run_hook__: ClassVar[bool] = False
    interval: AbstractIntervalGenerator | None = None

    InputItem = _io.InputItem
    OutputItem = _io.OutputItem

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        if self.interval is not None:  # each instance counts its own polls
            self.interval = copy.deepcopy(self.interval)
        self.logger: logging.Logger | logging.LoggerAdapter[Any] = _DEFAULT_LOGGER
        self.id: str | None = None
        self.version: str | None = None
        self.root_pipeline_id: str | None = None
        self.top_pipeline_id: str | None = None
        self.loop: int | None = None
        self.inner_loop: int | None = None
        self.callback_data: Any = None
        self._schedule_finished = False

    def execute(self, data: DataObject, parent_data: DataObject) -> bool | None:
        """Runs the node's work once; return False to fail, True or None to succeed (as in bamboo, any
        other value counts by its truth: ``0`` or ``""`` fails)."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement execute(data, parent_data)")

    def schedule(self, data: DataObject, parent_data: DataObject, callback_data: Any = None) -> bool | None:
        """Runs once per poll or callback; ``callback_data`` is the callback payload or None. Returns as
        :meth:`execute` does."""
        return True

    def rollback(self, data: DataObject, parent_data: DataObject, rollback_data: Any = None) -> bool | None:
        """Undoes the node's work when a pipeline is rolled back; succeeds by default."""
        return True

    def inputs_format(self) -> list[_io.InputItem]:
        """Declares the inputs the service reads; override to document them."""
        return []

    def outputs_format(self) -> list[_io.OutputItem]:
        """Declares the outputs the service writes; override to document them."""
        return []

    def inputs(self) -> list[_io.InputItem]:
        """Returns the declared inputs."""
        return self.inputs_format()

    def outputs(self) -> list[_io.OutputItem]:
        """Returns the declared outputs followed by the ones the engine writes for every node."""
        return [
            *self.outputs_format(),
            _io.OutputItem(name="Execution result", key="_result", type="boolean"),
            _io.OutputItem(name="Loop count", key="_loop", type="int"),
            _io.OutputItem(name="Inner loop count", key="_inner_loop", type="int"),
        ]

    def need_schedule(self) -> bool:
        """Whether the node has a schedule phase."""
        return bool(self.__need_schedule__)

    def need_run_hook(self) -> bool:
        """Whether the engine should call the lifecycle hooks."""
        return bool(self.__need_run_hook__)

    def multi_callback_enabled(self) -> bool:
        """Whether the node accepts several callbacks."""
        return bool(self.__multi_callback_enabled__)

    def schedule_type(self) -> str | None:
        """Returns ``None`` (no schedule), ``"poll"``, ``"multiple_callback"`` or ``"callback"``."""
        if not self.need_schedule():
            return None
        if self.interval is not None:
            return SCHEDULE_POLL
        if self.multi_callback_enabled():
            return SCHEDULE_MULTIPLE_CALLBACK
        return SCHEDULE_CALLBACK

    def finish_schedule(self) -> None:
        """Marks the schedule phase done (polling and multi-callback services call this)."""
        self._schedule_finished = True

    def is_schedule_finished(self) -> bool:
        """Whether :meth:`finish_schedule` was called on this instance."""
        return self._schedule_finished

    def clean_status(self) -> None:
        """Forgets a previous :meth:`finish_schedule`."""
        self._schedule_finished = False

    def setup_runtime_attrs(self, **attrs: Any) -> None:
        """Sets runtime attributes (``id``, ``version``, ``loop``, ``logger``, ...) on the instance.

        A ``logger`` of None keeps the current one.
        """
        if attrs.get("logger", _DEFAULT_LOGGER) is None:
            attrs.pop("logger")
        for name, value in attrs.items():
            setattr(self, name, value)
