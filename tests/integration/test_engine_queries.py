"""Query API shapes: states (flat and nested), children, execution data, raw data, histories,
logs, debug infos, and how unknown ids are answered."""

from __future__ import annotations

from datetime import datetime

import pytest
from engine_fixtures import finish, node_state, outputs, refused, run, wait_state

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.errors import NodeNotReachedError, NotFoundError

pytestmark = pytest.mark.timeout(60)

STATE_KEYS = {"id", "state", "root_id", "root_id:", "parent_id", "version", "loop", "retry", "skip",
              "error_ignored", "error_ignorable", "created_time", "started_time", "archived_time", "children",
              "wait_reason"}
HISTORY_KEYS = {"id", "node_id", "started_time", "archived_time", "loop", "retry", "skip", "version", "inputs",
                "outputs"}


def nested_tree():
    inner = ServiceActivity(component_code="t_echo")
    inner.component.inputs.x = Var(type=Var.SPLICE, value="${p}")
    sub_start = EmptyStartEvent()
    sub_end = EmptyEndEvent()
    sub_start.extend(inner).extend(sub_end)
    sub = SubProcess(start=sub_start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="d")}),
                     params=Params({"${p}": Var(type=Var.PLAIN, value="given")}))
    outer = ServiceActivity(component_code="example_component")
    start = EmptyStartEvent()
    start.extend(outer).extend(sub).extend(EmptyEndEvent())
    return build_tree(start), start, outer, sub, inner, sub_start, sub_end


def check_entry(entry, node_id, root_id, parent_id):
    assert set(entry) == STATE_KEYS
    assert entry["id"] == node_id
    assert entry["root_id"] == entry["root_id:"] == root_id
    assert entry["parent_id"] == parent_id
    assert entry["error_ignorable"] == entry["error_ignored"]
    assert isinstance(entry["version"], str) and entry["version"]
    for key in ("created_time", "started_time", "archived_time"):
        assert entry[key] is None or (isinstance(entry[key], datetime) and entry[key].tzinfo is not None)


def test_pipeline_states_flat(runtime):
    tree, start, outer, sub, inner, sub_start, sub_end = nested_tree()
    finish(runtime, tree)
    res = api.get_pipeline_states(runtime, tree["id"])
    assert res.result and set(res.data) == {tree["id"]}
    root = res.data[tree["id"]]
    check_entry(root, tree["id"], tree["id"], tree["id"])
    kids = root["children"]
    assert set(kids) == {start.id, outer.id, sub.id, inner.id, sub_start.id, sub_end.id, tree["end_event"]["id"]}
    check_entry(kids[outer.id], outer.id, tree["id"], tree["id"])
    check_entry(kids[inner.id], inner.id, tree["id"], sub.id)
    assert all(k["children"] == {} for k in kids.values())


def test_pipeline_states_nested(runtime):
    tree, start, outer, sub, inner, sub_start, sub_end = nested_tree()
    finish(runtime, tree)
    root = api.get_pipeline_states(runtime, tree["id"], flat_children=False).data[tree["id"]]
    assert set(root["children"]) == {start.id, outer.id, sub.id, tree["end_event"]["id"]}
    sub_entry = root["children"][sub.id]
    check_entry(sub_entry, sub.id, tree["id"], tree["id"])
    assert set(sub_entry["children"]) == {sub_start.id, inner.id, sub_end.id}
    check_entry(sub_entry["children"][inner.id], inner.id, tree["id"], sub.id)


def test_children_states(runtime):
    tree, start, outer, sub, inner, sub_start, sub_end = nested_tree()
    finish(runtime, tree)
    res = api.get_children_states(runtime, sub.id)
    assert res.result and set(res.data) == {sub.id}
    assert set(res.data[sub.id]["children"]) == {sub_start.id, inner.id, sub_end.id}
    root = api.get_children_states(runtime, tree["id"]).data[tree["id"]]
    assert set(root["children"]) == {start.id, outer.id, sub.id, tree["end_event"]["id"]}
    leaf = api.get_children_states(runtime, outer.id).data[outer.id]
    assert leaf["children"] == {} and leaf["state"] == "FINISHED"


def test_only_reached_nodes_have_states(runtime):
    gate = ServiceActivity(component_code="t_callback")
    later = ServiceActivity(component_code="example_component")
    start = EmptyStartEvent()
    start.extend(gate).extend(later).extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, gate.id, "RUNNING")
    kids = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["children"]
    assert set(kids) == {start.id, gate.id}
    assert kids[gate.id]["archived_time"] is None and kids[gate.id]["started_time"] is not None


def test_execution_data_of_activity_subprocess_and_pipeline(runtime):
    tree, start, outer, sub, inner, *_ = nested_tree()
    tree["data"]["outputs"] = []
    finish(runtime, tree)
    data = api.get_execution_data(runtime, inner.id)
    assert data.result
    assert data.data == {"inputs": {"x": "given", "_loop": 1, "_inner_loop": 1},
                         "outputs": {"x": "given", "out": "given!", "_result": True, "_loop": 1, "_inner_loop": 1}}
    assert api.get_execution_data_inputs(runtime, inner.id).data == data.data["inputs"]
    assert api.get_execution_data_outputs(runtime, inner.id).data == data.data["outputs"]
    sub_data = api.get_execution_data(runtime, sub.id).data
    assert sub_data["inputs"]["${p}"] == "given"
    assert sub_data["outputs"]["_loop"] == 1 and sub_data["outputs"]["_inner_loop"] == 1


def test_get_data_raw_inputs_and_output_mapping(runtime):
    act = ServiceActivity(component_code="t_echo")
    act.component.inputs.a = Var(type=Var.PLAIN, value="${v}")
    act.component.inputs.b = Var(type=Var.SPLICE, value="${v}")
    act.component.inputs.c = {"type": "splice", "value": "${v}", "need_render": False}
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    data = Data(inputs={"${v}": Var(type=Var.PLAIN, value=1),
                        "${o}": NodeOutput(source_act=act.id, source_key="out")})
    tree = build_tree(start, data=data)
    finish(runtime, tree, root_pipeline_data={"who": "me"})
    raw = api.get_data(runtime, act.id)
    assert raw.result
    assert raw.data["inputs"] == {
        "a": {"need_render": False, "value": "${v}"},
        "b": {"need_render": True, "value": "${v}"},
        "c": {"need_render": False, "value": "${v}"},
    }
    assert raw.data["outputs"] == {"out": "${o}"}
    got = api.get_execution_data_inputs(runtime, act.id).data
    assert got["a"] == "${v}" and got["b"] == 1 and got["c"] == "${v}"
    root_raw = api.get_data(runtime, tree["id"]).data
    assert root_raw["inputs"]["who"]["value"] == "me"


def test_histories_full_and_short(runtime):
    act = ServiceActivity(component_code="t_fail")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    v1 = wait_state(runtime, act.id, "FAILED")["version"]
    assert api.retry_node(runtime, act.id).result
    v2 = wait_state(runtime, act.id, "FAILED", timeout=10)
    assert v2["retry"] == 1
    assert api.skip_node(runtime, act.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    full = api.get_node_histories(runtime, act.id)
    assert full.result and len(full.data) == 2
    first, second = full.data
    assert set(first) == HISTORY_KEYS
    assert first["version"] == v1 and second["version"] == v2["version"]
    assert (first["retry"], second["retry"]) == (0, 1)
    assert first["outputs"]["ex_data"] == "t_fail said no"
    assert first["inputs"]["_loop"] == 1
    assert first["started_time"] <= first["archived_time"] <= second["started_time"]
    assert first["id"] != second["id"]
    short = api.get_node_short_histories(runtime, act.id).data
    assert [set(h) for h in short] == [HISTORY_KEYS - {"inputs", "outputs", "retry"}] * 2
    assert [h["version"] for h in short] == [v1, v2["version"]]
    assert api.get_node_histories(runtime, act.id, loop=1).data == full.data
    assert api.get_node_histories(runtime, act.id, loop=2).data == []


def test_no_history_for_single_run(runtime):
    act = ServiceActivity(component_code="example_component")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    finish(runtime, build_tree(start))
    assert api.get_node_histories(runtime, act.id).data == []


def test_debug_infos(runtime):
    tree, start, outer, sub, inner, *_ = nested_tree()
    finish(runtime, tree)
    info = api.get_pipeline_debug_info(runtime, tree["id"])
    assert info.result and set(info.data) >= {"context_values", "processes"}
    assert info.data["processes"]
    sub_info = api.get_pipeline_debug_info(runtime, sub.id).data
    assert any(v["key"] == "${p}" and v["value"] == "given" for v in sub_info["context_values"])
    node = api.get_node_debug_info(runtime, inner.id)
    assert node.result and set(node.data) >= {"node", "data", "state", "err"}
    assert node.data["state"]["state"] == "FINISHED"
    assert node.data["node"]["id"] == inner.id


UNKNOWN = "e" + "f" * 32


@pytest.mark.parametrize(("name", "args", "empty"), [
    ("get_pipeline_states", (), {}),
    ("get_children_states", (), {}),
    ("get_execution_data_inputs", (), {}),
    ("get_execution_data_outputs", (), {}),
    ("get_node_histories", (), []),
    ("get_node_short_histories", (), []),
    ("get_node_logs", (), ""),
])
def test_unknown_ids_answer_empty(runtime, name, args, empty):
    res = getattr(api, name)(runtime, UNKNOWN, *args)
    assert res.result, res.message
    assert res.data == empty


@pytest.mark.parametrize("name", ["get_execution_data", "get_data", "get_node_debug_info"])
def test_unknown_ids_refused_by_data_queries(runtime, name):
    refused(getattr(api, name)(runtime, UNKNOWN), UNKNOWN)


def test_not_reached_node_answers_like_unknown(runtime):
    """The contract: a node in a stored tree that no process has reached answers as an unknown id:
    empty data from the polling queries, a refusal naming it from the three data queries (bamboo's
    ``get_data`` answers it from its data rows). Reached nodes, the running subprocess and the root
    keep their answers."""
    gate = ServiceActivity(component_code="t_callback")
    later = ServiceActivity(component_code="example_component")
    sub_start = EmptyStartEvent()
    sub_start.extend(gate).extend(later).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    after = ServiceActivity(component_code="example_component")
    start = EmptyStartEvent()
    start.extend(sub).extend(after).extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, gate.id, "RUNNING")
    for pending in (later.id, after.id):
        assert api.get_children_states(runtime, pending).data == {}
        assert api.get_execution_data_outputs(runtime, pending).data == {}
        assert api.get_node_histories(runtime, pending).data == []
        assert api.get_node_short_histories(runtime, pending).data == []
        assert api.get_node_logs(runtime, pending).data == ""
        refused(api.get_execution_data(runtime, pending), pending)
        for name in ("get_data", "get_node_debug_info"):
            res = getattr(api, name)(runtime, pending)
            refused(res, pending, "not been reached yet", "no state")
            assert isinstance(res.exc, NodeNotReachedError) and isinstance(res.exc, NotFoundError)
        assert node_state(runtime, pending) is None
    for reached in (gate.id, sub.id, tree["id"]):
        assert set(api.get_data(runtime, reached).data) == {"inputs", "outputs"}
        info = api.get_node_debug_info(runtime, reached).data
        assert info["state"]["id"] == reached and info["state"]["state"] == "RUNNING"
    assert api.get_node_debug_info(runtime, gate.id).data["node"]["id"] == gate.id


def test_a_node_an_ended_pipeline_never_reached_is_refused_saying_so(runtime):
    """Found reviewing (session 17): a node on a branch a FINISHED pipeline did not take was
    refused saying its data "can be read once a process reaches it"; none will."""
    taken, skipped = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    start, gate = EmptyStartEvent(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"})
    start.extend(gate).connect(taken, skipped).converge(ConvergeGateway()).extend(EmptyEndEvent())
    tree = build_tree(start)
    finish(runtime, tree)
    for name in ("get_data", "get_node_debug_info"):
        res = getattr(api, name)(runtime, skipped.id)
        refused(res, skipped.id, f"its pipeline {tree['id']} ended (FINISHED) without reaching it")
        assert "once a process reaches it" not in res.message
        assert isinstance(res.exc, NodeNotReachedError)
    assert set(api.get_data(runtime, taken.id).data) == {"inputs", "outputs"}


def test_pipeline_outputs_after_finish(runtime):
    act = ServiceActivity(component_code="t_echo")
    act.component.inputs.x = Var(type=Var.PLAIN, value=5)
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(inputs={"${r}": NodeOutput(source_act=act.id, source_key="out")},
                                       outputs=["${r}"]))
    finish(runtime, tree)
    assert outputs(runtime, tree["id"]) == {"${r}": "5!"}
