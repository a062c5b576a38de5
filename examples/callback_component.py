"""A callback component: the node waits, RUNNING, until someone calls ``api.callback``.

``callback`` needs the node's current version, read from ``api.get_pipeline_states``; a stale
version is refused, so a late callback can never complete a later run of the node.

Run it as ``python examples/callback_component.py``. ``culm run examples/callback_component.py``
also loads it and then waits (until ``--timeout``) for the callback, which you send from another
shell: ``culm callback NODE --data '{"approve": true, "approver": "me"}'`` (NODE: the approval
node's id, shown by ``culm run``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components import Component, Service


class ApprovalService(Service):
    """Asks for an approval in ``execute``; the callback's payload decides in ``schedule``."""

    __need_schedule__ = True
    interval = None  # no polling: one callback completes the node

    def execute(self, data, parent_data):
        data.set_outputs("asked", data.get_one_of_inputs("question"))
        return True

    def schedule(self, data, parent_data, callback_data=None):
        payload = callback_data or {}
        data.set_outputs("approved_by", payload.get("approver"))
        return bool(payload.get("approve"))


class ApprovalComponent(Component):
    code = "example_approval"
    name = "Approval (callback example)"
    bound_service = ApprovalService


def build_pipeline() -> dict:
    """start -> approval -> end."""
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_approval", name="approval")
    act.component.inputs.question = Var(type=Var.PLAIN, value="deploy to production?")
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start)


def activity_id(tree: dict, name: str) -> str:
    return next(a["id"] for a in tree["activities"].values() if a.get("name") == name)


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def node_state(runtime: culm.Runtime, root_id: str, node_id: str) -> dict:
    states = api.get_pipeline_states(runtime, root_id).data
    return states[root_id]["children"].get(node_id, {}) if states else {}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, culm.Runtime(f"sqlite:///{Path(tmp) / 'callback.db'}") as runtime:
        pipeline = build_pipeline()
        root_id, node_id = pipeline["id"], activity_id(pipeline, "approval")
        result = api.run_pipeline(runtime, pipeline)
        assert result.result, result.message

        # execute() has run once its outputs are stored; from then on the node waits for us.
        waiting = wait_until(lambda: "asked" in api.get_execution_data_outputs(runtime, node_id).data)
        assert waiting, "the approval node never started waiting"
        version = node_state(runtime, root_id, node_id)["version"]
        result = api.callback(runtime, node_id, version, {"approver": "alice", "approve": True})
        print(f"callback: {result.result} {result.message}")

        finished = wait_until(lambda: api.get_pipeline_states(runtime, root_id).data[root_id]["state"] == "FINISHED")
        print(f"approval outputs: {api.get_execution_data_outputs(runtime, node_id).data}")
        print(f"pipeline {root_id} {'FINISHED' if finished else 'not finished'}")
        return 0 if result.result and finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
