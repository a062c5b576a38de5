"""Graph loops (cycle_tolerate), loop counters, the rerun limit, node-level loops."""

from __future__ import annotations

import pytest
from engine_fixtures import children, finish, inputs, node_state, outputs, refused, run, wait_state
from support import wait_until

from culm import api
from culm.builder import (
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)


def loop_tree(times, body=None, cond_key="${n}"):
    """start -> body -> eg -(loop < times)-> body | -(else)-> end."""
    start, end = EmptyStartEvent(), EmptyEndEvent()
    body = body or ServiceActivity(component_code="t_attrs")
    eg = ExclusiveGateway(conditions={0: f"{cond_key} < {times}", 1: f"{cond_key} >= {times}"})
    start.extend(body).extend(eg).connect(body, end)
    data = Data(inputs={"${n}": NodeOutput(source_act=body.id, source_key="_loop")})
    return build_tree(start, data=data), body, eg


def test_graph_loop_refused_without_cycle_tolerate(runtime):
    tree, *_ = loop_tree(3)
    res = api.run_pipeline(runtime, tree)
    refused(res)
    assert "circle" in res.message or "cycle" in res.message
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_graph_loop_ends_on_loop_output(runtime):
    tree, body, eg = loop_tree(3)
    entry = finish(runtime, tree, cycle_tolerate=True)
    st = entry["children"][body.id]
    assert st["loop"] == 3 and st["state"] == "FINISHED"
    assert entry["children"][eg.id]["loop"] == 3
    assert inputs(runtime, body.id)["_loop"] == 3 and inputs(runtime, body.id)["_inner_loop"] == 3
    out = outputs(runtime, body.id)
    assert (out["_loop"], out["_inner_loop"], out["loop"], out["inner_loop"]) == (3, 3, 3, 3)
    hist = api.get_node_histories(runtime, body.id).data
    assert [h["loop"] for h in hist] == [1, 2]
    assert [h["outputs"]["_loop"] for h in hist] == [1, 2]
    assert len({h["version"] for h in hist} | {st["version"]}) == 3
    assert [h["loop"] for h in api.get_node_histories(runtime, body.id, loop=2).data] == [2]
    assert [h["loop"] for h in api.get_node_short_histories(runtime, body.id, loop=1).data] == [1]


def test_reentry_resets_retry_skip_and_error_flags(runtime):
    body = ServiceActivity(component_code="t_fail", error_ignorable=True)
    tree, body, _eg = loop_tree(2, body=body)
    entry = finish(runtime, tree, cycle_tolerate=True)
    st = entry["children"][body.id]
    assert st["loop"] == 2 and st["error_ignored"] is True
    # outputs of an ignored failure are still mapped: the loop ended on _loop
    assert outputs(runtime, body.id)["_loop"] == 2


def test_rerun_limit_fails_node(runtime):
    start, end = EmptyStartEvent(), EmptyEndEvent()
    body = ServiceActivity(component_code="example_component")
    eg = ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"})
    start.extend(body).extend(eg).connect(body, end)
    tree = build_tree(start)
    run(runtime, tree, cycle_tolerate=True)
    st = wait_state(runtime, body.id, "FAILED", timeout=60)
    assert "exceed rerun limit 100" in outputs(runtime, body.id)["ex_data"]
    assert st["loop"] == 101
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_inner_loop_resets_when_subprocess_reentered(runtime):
    inner = ServiceActivity(component_code="t_attrs")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    start, end = EmptyStartEvent(), EmptyEndEvent()
    eg = ExclusiveGateway(conditions={0: "${n} < 3", 1: "${n} >= 3"})
    start.extend(sub).extend(eg).connect(sub, end)
    tree = build_tree(start, data=Data(inputs={"${n}": NodeOutput(source_act=sub.id, source_key="_loop")}))
    entry = finish(runtime, tree, cycle_tolerate=True)
    assert entry["children"][sub.id]["loop"] == 3
    assert entry["children"][inner.id]["loop"] == 3
    got = inputs(runtime, inner.id)
    assert got["_loop"] == 3 and got["_inner_loop"] == 1
    out = outputs(runtime, sub.id)
    assert out["_loop"] == 3
    hist = api.get_node_histories(runtime, inner.id).data
    assert [h["inputs"]["_inner_loop"] for h in hist] == [1, 1]


def test_loop_inside_subprocess_counts_inner_loop(runtime):
    body = ServiceActivity(component_code="t_attrs")
    sub_start, sub_end = EmptyStartEvent(), EmptyEndEvent()
    eg = ExclusiveGateway(conditions={0: "${n} < 2", 1: "${n} >= 2"})
    sub_start.extend(body).extend(eg).connect(body, sub_end)
    sub = SubProcess(start=sub_start, data=Data(inputs={"${n}": NodeOutput(source_act=body.id,
                                                                                source_key="_inner_loop")}))
    start = EmptyStartEvent()
    start.extend(sub).extend(EmptyEndEvent())
    tree = build_tree(start)
    finish(runtime, tree, cycle_tolerate=True)
    got = inputs(runtime, body.id)
    assert got["_loop"] == 2 and got["_inner_loop"] == 2


def test_node_loop_config_iterates_and_collects_outputs(runtime):
    body = ServiceActivity(component_code="t_attrs", loop_config={"enable": True, "loop_times": 3})
    start = EmptyStartEvent()
    start.extend(body).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(outputs=["outputs"]))
    entry = finish(runtime, tree)
    assert entry["children"][body.id]["loop"] == 3
    assert len(api.get_node_histories(runtime, body.id).data) == 2
    assert body.id in children(runtime, tree["id"])


def test_node_loop_fail_skip_continues(runtime):
    body = ServiceActivity(component_code="t_fail", loop_config={"enable": True, "loop_times": 2, "fail_skip": True})
    start = EmptyStartEvent()
    start.extend(body).extend(EmptyEndEvent())
    entry = finish(runtime, build_tree(start))
    st = entry["children"][body.id]
    assert st["loop"] == 2 and st["error_ignored"] is True


def test_skip_flag_reset_on_reentry(runtime):
    body = ServiceActivity(component_code="t_fail")
    tree, body, _eg = loop_tree(2, body=body)
    run(runtime, tree, cycle_tolerate=True)
    wait_state(runtime, body.id, "FAILED")
    assert api.skip_node(runtime, body.id).result
    st = wait_state(runtime, body.id, "FAILED")
    assert st["loop"] == 2 and st["skip"] is False
    assert api.skip_node(runtime, body.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    hist = api.get_node_histories(runtime, body.id).data
    assert [(h["loop"], h["skip"]) for h in hist] == [(1, False), (1, True), (2, False)]


def test_node_inputs_see_their_own_loop_counter_through_a_node_output(runtime):
    body = ServiceActivity(component_code="t_echo")
    body.component.inputs.x = Var(type=Var.SPLICE, value="${n}")
    tree, body, _eg = loop_tree(3, body=body)
    finish(runtime, tree, cycle_tolerate=True)
    # ${n} maps the node's own _loop: it is seeded before rendering, so each pass sees its own count.
    assert inputs(runtime, body.id)["x"] == 3
    assert [h["inputs"]["x"] for h in api.get_node_histories(runtime, body.id).data] == [1, 2]


# -- update_node_loop_times -----------------------------------------------------------------------
def _callback_loop(loop_times):
    body = ServiceActivity(component_code="t_callback",
                           loop_config={"enable": True, "loop_times": loop_times, "outputs_key": "${passes}"})
    start = EmptyStartEvent()
    start.extend(body).extend(EmptyEndEvent())
    return build_tree(start, data=Data(outputs=["${passes}"])), body


def _answer_pass(runtime, node_id, loop):
    """Wait for iteration ``loop`` of a callback loop node and answer it."""
    def waiting():
        st = node_state(runtime, node_id)
        return st if st and st["state"] == "RUNNING" and st["loop"] == loop else None

    version = wait_until(waiting, what=f"iteration {loop} of {node_id}")["version"]
    wait_until(lambda: api.callback(runtime, node_id, version, {"ok": True}).result, what=f"callback {loop}")


@pytest.mark.parametrize(("configured", "updated", "passes"), [(2, 4, 4), (5, 1, 1)])
def test_update_node_loop_times_changes_a_running_node_loop(runtime, configured, updated, passes):
    tree, body = _callback_loop(configured)
    run(runtime, tree)
    wait_state(runtime, body.id, "RUNNING")

    assert api.update_node_loop_times(runtime, body.id, updated).result is True
    for loop in range(1, passes + 1):
        _answer_pass(runtime, body.id, loop)

    wait_state(runtime, tree["id"], "FINISHED")
    assert node_state(runtime, body.id)["loop"] == passes
    collected = api.get_execution_data_outputs(runtime, tree["id"]).data["${passes}"]
    assert [entry["inner_loop"] for entry in collected] == list(range(1, passes + 1))
    # Bookkeeping stays out of the context bamboo code sees.
    keys = {cv["key"] for cv in api.get_pipeline_debug_info(runtime, tree["id"]).data["context_values"]}
    assert not any(key.startswith("_loop_times:") for key in keys)


def test_update_node_loop_times_refusals(runtime):
    tree, body = _callback_loop(2)
    plain = ServiceActivity(component_code="t_attrs")
    start = EmptyStartEvent()
    start.extend(plain).extend(EmptyEndEvent())
    other = build_tree(start)
    run(runtime, tree)
    run(runtime, other)

    for bad in (-1, True, 2.0, 10**12, 10_001):
        refused(api.update_node_loop_times(runtime, body.id, bad), f"loop_times for node {body.id}",
                "must be a whole number from 0 to 10,000", "$CULM_MAX_LOOP_TIMES")
    refused(api.update_node_loop_times(runtime, plain.id, 3), plain.id, "loop_config")
    refused(api.update_node_loop_times(runtime, "e" + "0" * 32, 3), "does not exist")
    api.revoke_pipeline(runtime, tree["id"])


def test_runtime_update_node_loop_times_raises_like_bamboo(tmp_path):
    from culm import Runtime
    from culm.errors import InvalidOperationError, NotFoundError

    tree, body = _callback_loop(1)
    with Runtime(f"sqlite:///{tmp_path / 'loops.db'}") as rt:
        run(rt, tree)
        wait_state(rt, body.id, "RUNNING")
        rt.update_node_loop_times(body.id, 2)
        with pytest.raises(InvalidOperationError, match="must be a whole number from 0 to"):
            rt.update_node_loop_times(body.id, "3")
        with pytest.raises(NotFoundError):
            rt.update_node_loop_times("e" + "1" * 32, 3)
        for loop in (1, 2):
            _answer_pass(rt, body.id, loop)
        wait_state(rt, tree["id"], "FINISHED")
        assert node_state(rt, body.id)["loop"] == 2
