"""A callback that arrives while the component is still inside execute() is kept, not refused."""

from __future__ import annotations

import components
import pytest
from engine_fixtures import node_state, run, wait_pipeline, wait_state

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components import Component, Service


class SlowStartCallbackService(Service):
    """Waits for a gate inside execute(), then waits for one callback."""

    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        components.gate(data.inputs.gate).wait(timeout=10)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.got = callback_data
        return True


class SlowStartCallbackComponent(Component):
    code = "t_slow_start_callback"
    name = "slow start callback"
    bound_service = SlowStartCallbackService


@pytest.mark.embedded_only  # its component is defined here, so worker processes do not have it
def test_callback_before_the_schedule_exists_is_delivered_once_it_does(runtime) -> None:
    start, end = EmptyStartEvent(), EmptyEndEvent()
    act = ServiceActivity(component_code="t_slow_start_callback")
    act.component.inputs.gate = Var(type=Var.PLAIN, value="early-callback")
    start.extend(act).extend(end)
    tree = build_tree(start)
    root = run(runtime, tree)
    version = wait_state(runtime, act.id, "RUNNING")["version"]

    res = api.callback(runtime, act.id, version, {"early": True})
    assert res.result, res.message
    components.gate("early-callback").set()

    wait_pipeline(runtime, root, "FINISHED")
    assert api.get_execution_data_outputs(runtime, act.id).data["got"] == {"early": True}
    assert node_state(runtime, act.id)["state"] == "FINISHED"


def test_callback_to_a_node_that_never_waits_is_refused(runtime) -> None:
    start, end = EmptyStartEvent(), EmptyEndEvent()
    act = ServiceActivity(component_code="t_gate")
    act.component.inputs.gate = Var(type=Var.PLAIN, value="never-waits")
    start.extend(act).extend(end)
    tree = build_tree(start)
    root = run(runtime, tree)
    version = wait_state(runtime, act.id, "RUNNING")["version"]
    res = api.callback(runtime, act.id, version, {})
    assert not res.result
    assert act.id in res.message and "not waiting for a callback" in res.message
    components.gate("never-waits").set()
    wait_pipeline(runtime, root, "FINISHED")
