"""Components of the random-tree storms (``storm_trees.py``): each records every call it makes.

A call appends ``<kind> <node_id> <version> <pid>`` to :func:`log_path` (append mode: one short write is atomic, in threads and in worker processes alike), so a storm counts how
often a node's ``execute`` ran for one version. Codes start with ``s_``; worker processes import
this module through ``CULM_IMPORTS``.
"""

from __future__ import annotations

import os
import time

from culm.components import Component, Service, StaticIntervalGenerator
from culm.events import ExecutableEndEvent
from culm.variables import LazyVariable


def log_path() -> str:
    """``$CULM_STORM_LOG``, else a file in the tests' shared directory (emptied before each test)."""
    from components import SHARED_DIR

    return os.environ.get("CULM_STORM_LOG") or str(SHARED_DIR / "storm-calls")


def record(kind: str, service: Service) -> None:
    record_line(kind, service.id, service.version)


def record_line(kind: str, node_id: str, version: str) -> None:
    log = log_path()
    line = f"{kind} {node_id} {version} {os.getpid()}\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class _Recorded(Service):
    """Records ``execute``; sleeps ``ms`` milliseconds (input) to widen the windows a storm hits."""

    def execute(self, data, parent_data):
        record("execute", self)
        time.sleep(float(data.get_one_of_inputs("ms", 0) or 0) / 1000)
        return self.outcome(data)

    def outcome(self, data) -> bool:
        return True


class PlainService(_Recorded):
    pass


class FlakyService(_Recorded):
    """Fails unless input ``ok`` is truthy (a retry with ``{"ok": True}`` makes it pass)."""

    def outcome(self, data) -> bool:
        if data.get_one_of_inputs("ok"):
            return True
        data.outputs.ex_data = "s_flaky said no"
        return False


class RaisingService(_Recorded):
    """Raises (an error path, not a returned False) unless input ``ok`` is truthy."""

    def outcome(self, data) -> bool:
        if data.get_one_of_inputs("ok"):
            return True
        raise RuntimeError("s_raise blew up")


class PollService(_Recorded):
    """Polls ``polls`` times (input, default 2; ``interval`` seconds apart), then finishes."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def schedule(self, data, parent_data, callback_data=None):
        record("poll", self)
        count = int(data.get_one_of_outputs("count", 0) or 0) + 1
        data.outputs.count = count
        if count >= int(data.get_one_of_inputs("polls", 2) or 2):
            self.finish_schedule()
        return True


class CallbackService(_Recorded):
    """Waits for one callback; fails when its payload says ``{"ok": False}``."""

    __need_schedule__ = True
    interval = None

    def schedule(self, data, parent_data, callback_data=None):
        record("callback", self)
        return (callback_data or {}).get("ok", True)


class MultiCallbackService(_Recorded):
    """Takes callbacks until one says ``done`` (counting them in ``received``); one that says
    ``{"ok": False}`` fails it; ``ms`` and ``gate`` hold the call (a sleep; until a file exists)."""

    __need_schedule__ = True
    __multi_callback_enabled__ = True
    interval = None

    def schedule(self, data, parent_data, callback_data=None):
        record("callback", self)
        payload = callback_data or {}
        time.sleep(float(payload.get("ms", 0)) / 1000)
        if payload.get("gate"):  # held until that file exists (bounded): a test kills the call meanwhile
            deadline = time.monotonic() + 60
            while not os.path.exists(payload["gate"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        data.outputs.received = int(data.get_one_of_outputs("received", 0) or 0) + 1
        if not payload.get("ok", True):
            return False
        if payload.get("done"):
            self.finish_schedule()
        return True


class RecordedEnd(ExecutableEndEvent):
    """An executable end event recording ``end <pipeline> - <pid>``: it runs once per pipeline or
    subprocess run (the storms' trees never enter a subprocess twice)."""

    code = "s_end"

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        record_line("end", current_pipeline_id, "-")


class MarkGate(LazyVariable):
    """A subprocess parameter that fails the subprocess on entry while its value (``${mark}`` of
    the parent) is 0: an operator sets ``${mark}`` and retries the subprocess."""

    code = "s_mark_gate"

    def get_value(self):
        if str(self.value).strip() in ("0", ""):
            raise ValueError("s_mark_gate: ${mark} is 0; set it and retry the subprocess")
        return self.value


def _component(code: str, service: type[Service]) -> type[Component]:
    return type(f"{service.__name__}Component", (Component,), {"code": code, "name": code, "bound_service": service})


CODES = {
    "s_plain": _component("s_plain", PlainService),
    "s_flaky": _component("s_flaky", FlakyService),
    "s_raise": _component("s_raise", RaisingService),
    "s_poll": _component("s_poll", PollService),
    "s_callback": _component("s_callback", CallbackService),
    "s_multi": _component("s_multi", MultiCallbackService),
}
