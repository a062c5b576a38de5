"""Plugins written the way bamboo's documentation writes them, with only the imports swapped.

Imported by the test process and by every ``culm worker`` of the distributed backends (see
``WORKER_ENV`` in ``conftest.py``), so the same code runs wherever a node runs. Hooks record their
calls in ``data.outputs["hooks"]``: execute-path hook changes are kept, as in bamboo, so the
record is visible from any process through ``get_execution_data_outputs``.
"""

from __future__ import annotations

import json

from components import SHARED_DIR

from culm.components import Component, Service  # bamboo: pipeline.core.flow.activity / ...component
from culm.events import ExecutableEndEvent, FlowNodeClsFactory  # bamboo: pipeline.core.flow
from culm.validator import api  # bamboo: bamboo_engine.validator


def _mark(data, name):
    data.set_outputs("hooks", data.get_one_of_outputs("hooks", []) + [name])
    return True


class HookRecordService(Service):
    """Input ``mode``: ok (default), fail or raise. Hooks as bamboo's docs write them."""

    __need_run_hook__ = True

    def execute(self, data, parent_data):
        mode = data.get_one_of_inputs("mode", "ok")
        if mode == "raise":
            raise RuntimeError("bamboo-style execute raised")
        return mode != "fail"

    def node_enter(self, data, parent_data):
        return _mark(data, "node_enter")

    def pre_execute(self, data, parent_data):
        return _mark(data, "pre_execute")

    def post_execute(self, data, parent_data):
        return _mark(data, "post_execute")

    def node_execute_exception(self, data, parent_data):
        return _mark(data, "node_execute_exception")

    def node_execute_fail(self, data, parent_data):
        return _mark(data, "node_execute_fail")

    def pre_schedule(self, data, parent_data, callback_data=None):
        return _mark(data, "pre_schedule")

    def post_schedule(self, data, parent_data, callback_data=None):
        return _mark(data, "post_schedule")

    def node_schedule_exception(self, data, parent_data, callback_data=None):
        return _mark(data, "node_schedule_exception")

    def node_schedule_fail(self, data, parent_data, callback_data=None):
        return _mark(data, "node_schedule_fail")

    def node_finish(self, data, parent_data):
        return _mark(data, "node_finish")


class HookRecordCallbackService(HookRecordService):
    """Waits for one callback; ``{"raise": True}`` makes ``schedule`` raise."""

    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        data.outputs.waiting = True
        return super().execute(data, parent_data)

    def schedule(self, data, parent_data, callback_data=None):
        if (callback_data or {}).get("raise"):
            raise RuntimeError("bamboo-style schedule raised")
        return True

    # A callback node's node_finish gets the payload (as bamboo passes it): written to take it.
    def node_finish(self, data, parent_data, callback_data=None):
        return _mark(data, "node_finish")


class HookRecordComponent(Component):
    name = "hook record"
    code = "bamboo_hook_node"
    bound_service = HookRecordService


class HookRecordCallbackComponent(Component):
    name = "hook record callback"
    code = "bamboo_hook_callback_node"
    bound_service = HookRecordCallbackService


# A custom end event registered as bamboo's "custom end event" guide does.
END_CALLS = "bamboo-end-calls"


class CustomExecutableEndEvent(ExecutableEndEvent):
    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        with open(SHARED_DIR / END_CALLS, "a") as fh:
            fh.write(json.dumps([in_subprocess, root_pipeline_id, current_pipeline_id]) + "\n")


api.add_sink_type("CustomExecutableEndEvent")
FlowNodeClsFactory.register_node("CustomExecutableEndEvent", CustomExecutableEndEvent)


def end_calls():
    """``[in_subprocess, root_pipeline_id, current_pipeline_id]`` of every run of the end event."""
    path = SHARED_DIR / END_CALLS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
