"""Running component code outside any transaction: execute, schedule and hooks."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from culm._printable import engine_logger
from culm.core import observe, signals
from culm.core.records import now
from culm.model import limits
from culm.model.limits import clip_ex_data, clip_log_line, walk_problem

if TYPE_CHECKING:
    from culm.components import DataObject, Service

hook_logger = engine_logger("culm.hooks")
component_logger = engine_logger("culm.component")


class NodeLogger:
    """The ``self.logger`` of a service: lines are kept per node, version and loop."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.kept: list[tuple[float, str]] = []
        self.chars = 0
        self.dropped = self.dropped_chars = 0
        self.dropped_at = 0.0

    @property
    def lines(self) -> list[tuple[float, str]]:
        """The lines kept, then (when some were not) one saying how many went."""
        if not self.dropped:
            return self.kept
        note = (f"[WARNING] {self.dropped:,} more log lines ({self.dropped_chars:,} characters) of this call were "
                f"not kept: a call keeps {limits.MAX_CALL_LOG_LINES:,} lines and {limits.MAX_CALL_LOG_CHARS:,} "
                "characters at most (culm.model.limits.MAX_CALL_LOG_LINES, MAX_CALL_LOG_CHARS)")
        return [*self.kept, (self.dropped_at, note)]

    def _log(self, level: int, msg: object, *args: object, exc_info: object = None, **_: object) -> None:
        text = str(msg) % args if args else str(msg)
        if exc_info:
            text += "\n" + traceback.format_exc()
        component_logger.log(level, "[%s] %s", self.node_id, text)  # escaped by the logger's filter (InertRecords)
        line = clip_log_line(f"[{logging.getLevelName(level)}] {text}")
        if self.dropped or len(self.kept) >= limits.MAX_CALL_LOG_LINES or self.chars + len(line) > limits.MAX_CALL_LOG_CHARS:
            if not self.dropped:
                self.dropped_at = now()
            self.dropped += 1  # past the call's bounds: counted, not kept
            self.dropped_chars += len(line)
            return
        self.chars += len(line)
        self.kept.append((now(), line))

    def debug(self, msg: object, *args: object, **kw: object) -> None:
        self._log(logging.DEBUG, msg, *args, **kw)

    def info(self, msg: object, *args: object, **kw: object) -> None:
        self._log(logging.INFO, msg, *args, **kw)

    def warning(self, msg: object, *args: object, **kw: object) -> None:
        self._log(logging.WARNING, msg, *args, **kw)

    warn = warning

    def error(self, msg: object, *args: object, **kw: object) -> None:
        self._log(logging.ERROR, msg, *args, **kw)

    def exception(self, msg: object, *args: object, **kw: object) -> None:
        self._log(logging.ERROR, msg, *args, exc_info=True)

    def critical(self, msg: object, *args: object, **kw: object) -> None:
        self._log(logging.CRITICAL, msg, *args, **kw)

    def log(self, level: int, msg: object, *args: object, **kw: object) -> None:
        self._log(level, msg, *args, **kw)


@dataclass
class CallResult:
    """What one execute or schedule call produced."""

    ok: bool
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    ex_data: str | None = None
    need_schedule: bool = False
    schedule_type: str | None = None
    schedule_done: bool = False
    schedule_after: float = -1
    logs: list[tuple[float, str]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # What execute/schedule returned, kept as ``_result`` the way bamboo keeps it (None: True).
    returned: Any = None
    # The node loop's iterations after this one as the call saw them (its hooks went by it), for
    # settle to decide alike; update_node_loop_times during the call counts from the next
    # iteration. None: not known (settle reads the count).
    loop_left: int | None = None

    def __post_init__(self) -> None:
        if self.ex_data is not None and len(self.ex_data) > limits.MAX_EX_DATA_CHARS:
            self.ex_data = clip_ex_data(self.ex_data)


def not_here_message(exc: Exception) -> str:
    """What a node whose component this process lacks says: the code, the process, how to retry."""
    return (f"{exc} in the process that ran this node (host {socket.gethostname()}, pid {os.getpid()}); "
            "the process that runs this database's work must import every component its pipelines use: "
            "import the module that registers it there (a `culm worker` or the runtime holding the runner "
            "lock of a SQLite file), then retry the node (api.retry_node)")


def result_value(returned: object) -> Any:
    """What bamboo stores as ``_result`` for what ``execute``/``schedule`` returned: True for None,
    the value itself otherwise (``"done"``, ``0``). A value that is not a JSON scalar (a list, an
    object) is stored as its truth: bamboo would pickle it, culm's store keeps JSON only."""
    if returned is None:
        return True
    if isinstance(returned, bool | int | float | str):
        return returned
    return bool(returned)


def succeeded(returned: object) -> bool:
    """Whether what ``execute`` or ``schedule`` returned is a success: None (no return) or a true
    value, as bamboo judges it (``0``, ``""`` or an empty dict fail there too). A value whose truth
    cannot be told raises, and the call fails with that traceback."""
    return True if returned is None else bool(returned)


def finishes(ok: bool, error_ignorable: bool, fail_skip: bool) -> bool:
    """Whether an activity whose ``execute`` (or schedule phase) ended ``ok`` finishes (or fails)."""
    return ok or error_ignorable or fail_skip


def moves_on(ok: bool, error_ignorable: bool, fail_skip: bool, loop_left: int) -> bool:
    """Whether an activity whose ``execute`` (or schedule phase) ended ``ok`` finishes and moves on
    to the next node: not when it fails, nor when its node loop goes round again (a failure an
    ``error_ignorable`` node ignores ends the loop; ``fail_skip`` goes on with the next iteration).
    The engine's ``node_finish`` event and the service's ``node_finish`` hook are both sent by
    this rule (spec 7.4 step 8)."""
    if not finishes(ok, error_ignorable, fail_skip):
        return False
    again = (ok or not error_ignorable) and loop_left > 0
    return not again


@dataclass
class ServiceCall:
    """The fixed facts of one component call."""

    code: str
    version: str | None
    node_id: str
    state_version: str
    root_id: str
    top_pipeline_id: str
    loop: int
    inner_loop: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    root_data: dict[str, Any]
    error_ignorable: bool
    fail_skip: bool = False  # the node loop's ``fail_skip``
    loop_left: int = 0  # node loop iterations after this one (0: none, or no loop)

    def _service(self, logger: NodeLogger) -> Service:
        from culm.components import ComponentNotFoundError, library

        try:
            service = library.new_service(self.code, self.version)
        except ComponentNotFoundError as exc:
            raise ComponentNotFoundError(not_here_message(exc)) from exc
        service.setup_runtime_attrs(
            id=self.node_id, version=self.state_version, root_pipeline_id=self.root_id,
            top_pipeline_id=self.top_pipeline_id, loop=self.loop, inner_loop=self.inner_loop, logger=logger,
        )
        return service

    def _objects(self) -> tuple[DataObject, DataObject]:
        from culm.components import DataObject

        return DataObject(dict(self.inputs), dict(self.outputs)), DataObject(dict(self.root_data), {})

    def _result(self, data: DataObject, logger: NodeLogger, ok: bool, **kw: Any) -> CallResult:
        return _screened(CallResult(ok, dict(data.inputs), dict(data.outputs), logs=logger.lines,
                                    loop_left=self.loop_left, **kw))

    def execute(self) -> CallResult:
        """Create a fresh service and run ``execute`` with the execute-path hooks."""
        logger = NodeLogger(self.node_id)
        data, parent = self._objects()
        events: list[tuple[str, dict[str, Any]]] = []
        ids = {"root_pipeline_id": self.root_id, "node_id": self.node_id}
        try:
            service = self._service(logger)
        except Exception as exc:  # noqa: BLE001 - e.g. an unregistered code in this worker
            return CallResult(False, dict(self.inputs), {}, ex_data=str(exc), logs=logger.lines)
        hooks = _Hooks(service, data, parent)
        hooks("node_enter")
        hooks("pre_execute")
        events.append(("pre_execute", ids))
        if signals.pre_service_execute.has_receivers:
            signals.pre_service_execute.send(ServiceCall, service=service, data=data, parent_data=parent)
        ex_data, returned = None, None
        began = time.perf_counter()
        try:
            returned = service.execute(data, parent)
            ok = succeeded(returned)
        except Exception:  # noqa: BLE001 - component failure is a node failure
            ok, ex_data, returned = False, clip_ex_data(traceback.format_exc()), False
            hooks("node_execute_exception")
            events.append(("node_execute_exception", {**ids, "ex_data": ex_data}))
        if observe.call_observer is not None:
            observe.call_observer("execute", self.code, self.version, ok, ex_data is not None,
                                   time.perf_counter() - began)
        if ok:
            hooks("post_execute")
            events.append(("post_execute", ids))
        need_schedule = ok and bool(service.need_schedule())
        if not finishes(ok, self.error_ignorable, self.fail_skip):  # not when ignored (spec 4.4, 4.5, 8.2)
            hooks("node_execute_fail")
            events.append(("node_execute_fail", ids))
        if not need_schedule and moves_on(ok, self.error_ignorable, self.fail_skip, self.loop_left):
            hooks("node_finish")
        stype = service.schedule_type() if need_schedule else None
        res = self._result(data, logger, ok, ex_data=ex_data, need_schedule=need_schedule, schedule_type=stype,
                           returned=result_value(returned))
        res.events = events
        return res

    def schedule(self, times: int, callback_data: object) -> CallResult:
        """Run one ``schedule`` call; ``times`` is how many ran before (restores the interval)."""
        logger = NodeLogger(self.node_id)
        data, parent = self._objects()
        events: list[tuple[str, dict[str, Any]]] = []
        ids = {"root_pipeline_id": self.root_id, "node_id": self.node_id}
        try:
            service = self._service(logger)
        except Exception as exc:  # noqa: BLE001
            return CallResult(False, dict(self.inputs), dict(self.outputs), ex_data=str(exc), logs=logger.lines)
        with contextlib.suppress(AttributeError):  # a service may define its own read-only callback_data
            service.callback_data = callback_data
        hooks = _Hooks(service, data, parent, callback_data)
        hooks("pre_schedule")
        events.append(("pre_schedule", ids))
        if signals.pre_service_schedule.has_receivers:
            signals.pre_service_schedule.send(ServiceCall, service=service, data=data, parent_data=parent,
                                              callback_data=callback_data)
        ex_data, returned = None, None
        began = time.perf_counter()
        try:
            returned = service.schedule(data, parent, callback_data)
            ok = succeeded(returned)
        except Exception:  # noqa: BLE001
            ok, ex_data, returned = False, clip_ex_data(traceback.format_exc()), False
            hooks("node_schedule_exception")
            events.append(("node_schedule_exception", {**ids, "ex_data": ex_data}))
        if observe.call_observer is not None:
            observe.call_observer("schedule", self.code, self.version, ok, ex_data is not None,
                                   time.perf_counter() - began)
        if ok:
            hooks("post_schedule")
            events.append(("post_schedule", ids))
        stype = service.schedule_type()
        done = ok and (stype == "callback" or bool(service.is_schedule_finished()))
        after = -1.0
        if ok and not done and stype == "poll":
            after = _next_interval(service, times)
        if not finishes(ok, self.error_ignorable, self.fail_skip):  # not when ignored (spec 4.4, 4.5, 8.2)
            hooks("node_schedule_fail")
            events.append(("node_schedule_fail", ids))
        if done or (not ok and finishes(ok, self.error_ignorable, self.fail_skip)):
            hooks("node_finish")  # after each schedule phase, as the engine's node_finish (spec 7.5)
        res = self._result(data, logger, ok, ex_data=ex_data, schedule_type=stype, schedule_done=done,
                           schedule_after=after, returned=result_value(returned))
        res.events = events
        return res


_CONTAINERS = (dict, list, tuple)


def _screened(res: CallResult) -> CallResult:
    """``res``, failed, without each input or output holding more values than a store keeps.

    Counting them (a list holding the one before twice, 40 deep, holds 2**40) costs up to 0.5 s
    of CPU: here, on the user-code thread, instead of in the engine's write transaction, whose
    store would refuse the same values (:func:`culm.core.handlers.activity.record_call`, which
    words its refusal the same way, is the check for everything else).
    """
    problems = []
    own = res.outputs.get("ex_data")  # a component's own failure text, as long as a traceback may be
    if type(own) is str and len(own) > limits.MAX_EX_DATA_CHARS:
        res.outputs["ex_data"] = clip_ex_data(own)
    for what, part in (("inputs", res.inputs), ("outputs", res.outputs)):
        for key in [k for k, v in part.items() if isinstance(v, _CONTAINERS)]:
            if problem := walk_problem(part[key]):
                del part[key]
                problems.append(f"{what} the store cannot hold: {key!r}: {problem} (left out)")
    if problems:
        said = f"the result could not be stored: {'; '.join(problems)}"
        res.ok, res.need_schedule, res.schedule_done = False, False, False
        res.ex_data = f"{res.ex_data}\n{said}" if res.ex_data else said
    return res


def _next_interval(service: Service, times: int) -> float:
    interval = service.interval
    if interval is None:
        return 0.0
    interval.count = times
    value = interval.next()
    return float(value) if value is not None else 0.0


class _Hooks:
    """Calls ``__need_run_hook__`` methods; a hook that raises is logged and ignored."""

    def __init__(self, service: Service, data: DataObject, parent: DataObject, callback_data: object = None) -> None:
        self.service, self.data, self.parent, self.callback_data = service, data, parent, callback_data
        self.enabled = bool(getattr(service, "need_run_hook", lambda: False)())

    def __call__(self, name: str) -> None:
        if not self.enabled:
            return
        try:
            hook = getattr(self.service, name)
            # As bamboo (and the contract): ``callback_data`` only when there is one, so hooks
            # written as ``(self, data, parent_data)`` run on nodes without a payload. A callback
            # node's hook that cannot take the payload raises here and is ignored, as in bamboo.
            if self.callback_data is None:
                hook(self.data, self.parent)
            else:
                hook(self.data, self.parent, callback_data=self.callback_data)
        except BaseException as exc:  # noqa: BLE001 - hooks never change outcomes (SystemExit neither)
            signals.reraise_interrupt(exc)
            hook_logger.exception("hook %s of %s raised", name, type(self.service).__name__)


def dispatch_readonly_hook(code: str, component_version: str | None, name: str, inputs: dict[str, Any],
                           outputs: dict[str, Any], root_data: dict[str, Any], callback_data: Any = None, /, **attrs: Any) -> None:
    """Control-API hooks see copies of the node data; nothing they change is kept.

    Positional-only: ``attrs`` carries the node's state ``version``, which must not collide with
    the component version.
    """
    from culm.components import DataObject, library

    try:
        service = library.new_service(code, component_version)
    except Exception:  # noqa: BLE001
        return
    if not service.need_run_hook():
        return
    service.setup_runtime_attrs(**attrs)
    _Hooks(service, DataObject(dict(inputs), dict(outputs)), DataObject(dict(root_data), {}), callback_data)(name)
