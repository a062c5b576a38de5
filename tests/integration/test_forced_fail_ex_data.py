"""``forced_fail_activity`` with an ``ex_data`` over the payload limit was refused ("outputs the store
cannot hold: 'ex_data' ..."), naming neither the node nor the command; it is now cut like every
failure text (``limits.clip_ex_data``: the first and last halves around a note), on every runtime.
The CLI and REST reach the same command (tests/e2e)."""

from __future__ import annotations

import pytest
from engine_fixtures import node_state, outputs, run, wait_state
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.model import limits

pytestmark = pytest.mark.timeout(120)


def test_a_huge_forced_failure_text_is_cut_and_the_node_fails(runtime):
    start, act, end = EmptyStartEvent(), ServiceActivity(component_code="t_multi_callback"), EmptyEndEvent()
    start.extend(act).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_until(lambda: outputs(runtime, act.id).get("_result") is True, 30, what="the node to wait for callbacks")
    text = "A" * 4_000_000 + "B" * 4_000_000  # over the 7,000,000-byte payload limit
    res = api.forced_fail_activity(runtime, act.id, text)
    assert res.result, res.message
    assert node_state(runtime, act.id)["state"] == "FAILED"
    stored = outputs(runtime, act.id)["ex_data"]
    assert len(stored) <= limits.MAX_EX_DATA_CHARS
    assert stored.startswith("A" * 49_000) and stored.endswith("B" * 49_000)
    assert "characters cut: ex_data keeps the first and the last" in stored and "8,000,000 characters" in stored
    assert outputs(runtime, act.id)["_forced_failed"] is True
    # The operator goes on as with any failure: a retry runs the node again.
    assert api.retry_node(runtime, act.id).result
    version = wait_state(runtime, act.id, "RUNNING", timeout=30)["version"]
    wait_until(lambda: outputs(runtime, act.id).get("_result") is True, 30, what="the retried node to wait")
    assert api.callback(runtime, act.id, version, {"n": 1, "done": True}).result
    wait_state(runtime, tree["id"], "FINISHED", timeout=30)
