"""Components that do not return: the embedded runtime says so when they hold every user-code thread."""

from __future__ import annotations

import logging

import components  # noqa: F401 - registers t_gate
import pytest
from components import gate, reset_shared
from support import wait_until

from culm import api
from culm.builder import Data, EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.runtime import Runtime

pytestmark = pytest.mark.timeout(60)


def gated_tree(gate_name: str) -> tuple[dict, str]:
    start, act, end = EmptyStartEvent(), ServiceActivity(component_code="t_gate"), EmptyEndEvent()
    act.component.inputs.gate = Var(type=Var.PLAIN, value=gate_name)
    start.extend(act).extend(end)
    return build_tree(start, data=Data()), act.id


def test_every_thread_held_by_a_long_call_is_logged_naming_the_nodes(tmp_path, caplog):
    reset_shared()
    caplog.set_level(logging.WARNING, logger="culm.dispatch")
    runtime = Runtime(f"sqlite:///{tmp_path}/busy.db", workers=2)
    try:
        runtime.dispatcher.busy_after = 0.2
        held = [gated_tree("held") for _ in range(2)]
        for tree, _ in held:
            assert api.run_pipeline(runtime, tree).result

        def said() -> list[str]:
            return [r.getMessage() for r in caplog.records if "user-code threads are held" in r.getMessage()]

        wait_until(lambda: said(), timeout=10)
        message = said()[0]
        assert "all 2 user-code threads" in message
        for tree, node in held:
            assert f"node {node} of pipeline {tree['id']}" in message
        waiting, _ = gated_tree("other")  # its component would return at once, once it has a thread
        gate("other").set()
        assert api.run_pipeline(runtime, waiting).result
        assert len(said()) == 1  # once per spell, not at every sweep

        gate("held").set()
        gate("other").set()
        for tree in [t for t, _ in held] + [waiting]:
            wait_until(lambda tree=tree: api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["state"]
                       == "FINISHED", timeout=20)
    finally:
        gate("held").set()
        gate("other").set()
        runtime.close()
