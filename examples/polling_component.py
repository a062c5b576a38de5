"""A polling component: ``execute`` starts some work, ``schedule`` checks on it until it is done.

The engine calls ``schedule`` every ``interval`` seconds until the service calls
``finish_schedule()`` (or returns False, which fails the node). Run it as
``python examples/polling_component.py`` or ``culm run examples/polling_component.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components import Component, Service, StaticIntervalGenerator


class CountdownService(Service):
    """Pretends to wait for an outside job that completes after ``polls_needed`` checks."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0.2)

    def execute(self, data, parent_data):
        # A fresh service instance runs each call, so progress is kept in the outputs.
        data.set_outputs("polls", 0)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        polls = data.get_one_of_outputs("polls", 0) + 1
        data.set_outputs("polls", polls)
        if polls >= data.get_one_of_inputs("polls_needed", 3):
            data.set_outputs("job_result", "done")
            self.finish_schedule()
        return True


class CountdownComponent(Component):
    code = "example_countdown"
    name = "Countdown (polling example)"
    bound_service = CountdownService


def build_pipeline() -> dict:
    """start -> countdown (3 polls) -> end."""
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_countdown", name="countdown")
    act.component.inputs.polls_needed = Var(type=Var.PLAIN, value=3)
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start)


def activity_id(tree: dict, name: str) -> str:
    return next(a["id"] for a in tree["activities"].values() if a.get("name") == name)


def wait_for_end(runtime: culm.Runtime, root_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        states = api.get_pipeline_states(runtime, root_id).data
        state = states[root_id]["state"] if states else "UNKNOWN"
        if state in ("FINISHED", "REVOKED"):
            break
        time.sleep(0.05)
    return state


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, culm.Runtime(f"sqlite:///{Path(tmp) / 'polling.db'}") as runtime:
        pipeline = build_pipeline()
        result = api.run_pipeline(runtime, pipeline)
        assert result.result, result.message
        state = wait_for_end(runtime, pipeline["id"])
        outputs = api.get_execution_data_outputs(runtime, activity_id(pipeline, "countdown")).data
        print(f"countdown outputs: {outputs}")
        print(f"pipeline {pipeline['id']} {state}")
        return 0 if state == "FINISHED" and outputs.get("polls") == 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
