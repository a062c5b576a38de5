"""Plugins of the contract conformance tests (``test_contract_conformance.py``), written as a user
of the contract would: only ``culm.components`` / ``culm.variables`` / ``culm.events``.

``culm worker`` processes load this module through ``$CULM_IMPORTS`` (never ``--import``), as the
acceptance harness starts them. Everything a test checks travels in outputs, so it reads the same
from an embedded runtime and from a worker on another process.
"""

from __future__ import annotations

from typing import Any

from culm.components import Component, Service, StaticIntervalGenerator
from culm.events import ExecutableEndEvent, FlowNodeClsFactory
from culm.validator import add_sink_type
from culm.variables import LazyVariable

HOOK_CALLS: list[tuple[str, str, tuple[str, ...], Any]] = []  # (node id, hook, positional names, callback_data)


class RuntimeAttrsService(Service):
    """Copies its runtime attributes and an input to outputs, and logs a line."""

    def execute(self, data, parent_data):
        self.logger.info("attrs of %s", self.id)
        for name in ("id", "version", "root_pipeline_id", "top_pipeline_id", "loop", "inner_loop"):
            data.set_outputs(f"self_{name}", getattr(self, name))
        data.set_outputs("echo", data.get_one_of_inputs("value"))
        if data.get_one_of_inputs("value") is not None:
            data.outputs["via_item"] = data.inputs["value"]
            data.outputs.via_attribute = data.inputs.value
        data.set_outputs("parent_inputs", dict(parent_data.get_inputs()))
        return True


class RuntimeAttrsComponent(Component):
    name = "runtime attributes"
    code = "ct_attrs"
    bound_service = RuntimeAttrsService


class FailUnlessOkService(Service):
    """Fails (returns False) unless its input ``ok`` is true; a retry with ``{"ok": True}`` passes."""

    def execute(self, data, parent_data):
        data.set_outputs("seen_ok", data.get_one_of_inputs("ok", False))
        if not data.get_one_of_inputs("ok", False):
            data.set_outputs("ex_data", "ct_fail: ok is false")
            return False
        return None  # None succeeds, as True does


class FailUnlessOkComponent(Component):
    name = "fail unless ok"
    code = "ct_fail"
    bound_service = FailUnlessOkService


class RaiseService(Service):
    def execute(self, data, parent_data):
        raise ValueError("ct_raise exploded")


class RaiseComponent(Component):
    name = "raise"
    code = "ct_raise"
    bound_service = RaiseService


class CallbackService(Service):
    """Waits for one callback and copies its payload to outputs."""

    __need_schedule__ = True
    __need_run_hook__ = True
    interval = None

    def execute(self, data, parent_data):
        data.set_outputs("version_seen", self.version)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.set_outputs("callback_data", callback_data)
        self.finish_schedule()
        return True


def _recorder(hook: str):
    # Written the way bamboo's docs write hooks: (self, data, parent_data) and callback_data only
    # as a keyword the engine adds when there is one.
    def record(self, data, parent_data, **kwargs):
        HOOK_CALLS.append((self.id, hook, tuple(kwargs), kwargs.get("callback_data")))

    return record


HOOKS = ("node_enter", "pre_execute", "post_execute", "node_execute_fail", "node_execute_exception",
         "pre_schedule", "post_schedule", "node_schedule_fail", "node_schedule_exception", "node_finish",
         "pre_pause_node", "post_pause_node", "pre_retry_node", "post_retry_node", "pre_skip_node",
         "post_skip_node", "pre_forced_fail_activity", "post_forced_fail_activity", "pre_callback",
         "post_callback", "pre_resume_node", "post_resume_node")
for _hook in HOOKS:
    setattr(CallbackService, _hook, _recorder(_hook))


class CallbackComponent(Component):
    name = "callback"
    code = "ct_callback"
    version = "2.0"
    bound_service = CallbackService


class PollService(Service):
    """Polls ``polls`` times (0.1 s apart) and then finishes."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0.1)

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        count = data.get_one_of_outputs("count", 0) + 1
        data.set_outputs("count", count)
        if count >= data.get_one_of_inputs("polls", 1):
            self.finish_schedule()
        return True


class PollComponent(Component):
    name = "poll"
    code = "ct_poll"
    bound_service = PollService


class TaggedVariable(LazyVariable):
    """``value|pipeline_data["who"]|inner_loop``."""

    code = "ct_tagged"

    def get_value(self):
        return f"{self.value}|{self.pipeline_data.get('who')}|{self.inner_loop}"


class BrokenVariable(LazyVariable):
    code = "ct_broken"

    def get_value(self):
        raise RuntimeError("ct_broken cannot say")


class RecordingEnd(ExecutableEndEvent):
    """Ends a pipeline; an end event has no outputs, so the tests see its run by its state."""

    code = "ct_end"

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        if root_pipeline_id.startswith("explode"):
            raise RuntimeError(f"ct_end refuses {current_pipeline_id}")


class SinkEnd:
    """A custom end event registered the bamboo-pipeline way (factory + sink type), no base class."""

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        if root_pipeline_id.startswith("explode"):
            raise RuntimeError("ct_sink refuses")


add_sink_type("ct_sink")
FlowNodeClsFactory.register_node("ct_sink", SinkEnd)


def _log_signals(path: str) -> None:
    """Record every signal this process sends, as receivers written for bamboo see them."""
    import json
    import os

    from culm import signals

    def receiver(sender, **kwargs):
        sig = kwargs.pop("signal")
        event = kwargs.pop("event", None)
        line = {"pid": os.getpid(), "signal": "post_set_state" if sig is signals.post_set_state else "pipeline_event",
                "sender_is_class": isinstance(sender, type), "named": sorted(kwargs) + (["event"] if event else []),
                "node_id": kwargs.get("node_id"), "to_state": kwargs.get("to_state"),
                "event_type": getattr(event, "event_type", None), "data": getattr(event, "data", None)}
        with open(path, "a") as fh:
            fh.write(json.dumps(line, default=repr) + "\n")

    signals.post_set_state.connect(receiver)
    signals.pipeline_event.connect(receiver)


def _signal_log_from_env() -> None:
    import os

    if os.environ.get("CULM_CONTRACT_SIGNAL_LOG"):
        _log_signals(os.environ["CULM_CONTRACT_SIGNAL_LOG"])


_signal_log_from_env()
