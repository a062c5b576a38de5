"""Basic node semantics: a straight line, end events, executable end events, flags."""

from __future__ import annotations

from datetime import datetime

import components
import pytest
from engine_fixtures import children, finish, node_state, outputs, run, wait_pipeline, wait_state

from culm import api
from culm.builder import (
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExecutableEndEvent,
    NodeOutput,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)


def line(*acts, end=None):
    start = EmptyStartEvent()
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(end or EmptyEndEvent())
    return start


def test_straight_line_finishes_every_node(runtime):
    a, b = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="t_echo")
    start = line(a, b)
    tree = build_tree(start)
    entry = finish(runtime, tree)
    assert entry["state"] == "FINISHED"
    assert set(entry["children"]) == {start.id, a.id, b.id, tree["end_event"]["id"]}
    assert all(c["state"] == "FINISHED" for c in entry["children"].values())
    for c in entry["children"].values():
        assert c["loop"] == 1 and c["retry"] == 0 and c["skip"] is False and c["error_ignored"] is False
        assert isinstance(c["archived_time"], datetime) and c["archived_time"].tzinfo is not None


def test_builtin_pipe_example_component_echoes_inputs(runtime):
    act = ServiceActivity(component_code="pipe_example_component")
    act.component.inputs.a = Var(type=Var.PLAIN, value=1)
    act.component.inputs.b = Var(type=Var.PLAIN, value={"k": [1, 2]})
    finish(runtime, build_tree(line(act)))
    out = outputs(runtime, act.id)
    assert out["a"] == 1 and out["b"] == {"k": [1, 2]}
    assert out["_result"] is True and out["_loop"] == 1 and out["_inner_loop"] == 1


def test_none_return_counts_as_success(runtime):
    act = ServiceActivity(component_code="t_none")
    finish(runtime, build_tree(line(act)))
    assert outputs(runtime, act.id)["ran"] is True


def test_component_version_is_chosen(runtime):
    old, new = ServiceActivity(component_code="t_echo"), ServiceActivity(component_code="t_echo", version="2.0")
    finish(runtime, build_tree(line(old, new)))
    assert "version" not in outputs(runtime, old.id)
    assert outputs(runtime, new.id)["version"] == "v2"


def test_runtime_attributes_visible_to_service(runtime):
    act = ServiceActivity(component_code="t_attrs")
    tree = build_tree(line(act))
    finish(runtime, tree, root_pipeline_data={"operator": "alice"})
    out = outputs(runtime, act.id)
    st = node_state(runtime, act.id)
    assert out["node_id"] == act.id
    assert out["version"] == st["version"]
    assert out["root"] == tree["id"] and out["top"] == tree["id"]
    assert (out["loop"], out["inner_loop"], out["in_loop"], out["in_inner_loop"]) == (1, 1, 1, 1)
    assert out["parent_inputs"] == {"operator": "alice"}


def test_subprocess_attributes_top_pipeline_is_subprocess(runtime):
    inner = ServiceActivity(component_code="t_attrs")
    sub = SubProcess(start=line(inner))
    tree = build_tree(line(sub))
    finish(runtime, tree)
    out = outputs(runtime, inner.id)
    assert out["root"] == tree["id"] and out["top"] == sub.id


def test_unregistered_component_fails_node_naming_code(runtime):
    act = ServiceActivity(component_code="t_no_such_component")
    tree = build_tree(line(act))
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED")
    assert "t_no_such_component" in outputs(runtime, act.id)["ex_data"]
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_end_event_writes_pipeline_outputs(runtime):
    act = ServiceActivity(component_code="t_echo")
    act.component.inputs.x = Var(type=Var.PLAIN, value="v")
    data = Data(
        inputs={"${const}": Var(type=Var.PLAIN, value=3), "${out}": NodeOutput(source_act=act.id, source_key="out")},
        outputs=["${const}", "${out}"],
    )
    tree = build_tree(line(act), data=data)
    finish(runtime, tree)
    assert outputs(runtime, tree["id"]) == {"${const}": 3, "${out}": "v!"}


def test_executable_end_event_runs_plugin(runtime):
    inner_end = ExecutableEndEvent(type="t_record_end")
    sub = SubProcess(start=line(ServiceActivity(component_code="example_component"), end=inner_end))
    end = ExecutableEndEvent(type="t_record_end")
    tree = build_tree(line(sub, end=end))
    finish(runtime, tree)
    assert (True, tree["id"], sub.id) in components.end_calls()
    assert (False, tree["id"], tree["id"]) in components.end_calls()
    assert node_state(runtime, end.id)["state"] == "FINISHED"


def test_executable_end_event_exception_fails_and_retries(runtime):
    end = ExecutableEndEvent(type="t_raise_end")
    tree = build_tree(line(ServiceActivity(component_code="example_component"), end=end))
    run(runtime, tree)
    wait_state(runtime, end.id, "FAILED")
    assert "end event exploded" in outputs(runtime, end.id)["ex_data"]
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"
    assert api.retry_node(runtime, end.id).result
    wait_state(runtime, end.id, "FAILED")
    assert node_state(runtime, end.id)["retry"] == 1
    refused_skip = api.skip_node(runtime, end.id)
    assert not refused_skip.result


def test_failed_node_leaves_pipeline_running(runtime):
    a, b = ServiceActivity(component_code="t_fail"), ServiceActivity(component_code="example_component")
    tree = build_tree(line(a, b))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"
    assert b.id not in children(runtime, tree["id"])


def test_error_ignorable_continues_with_flag(runtime):
    a = ServiceActivity(component_code="t_fail", error_ignorable=True)
    b = ServiceActivity(component_code="example_component")
    tree = build_tree(line(a, b))
    entry = finish(runtime, tree)
    st = entry["children"][a.id]
    assert st["state"] == "FINISHED" and st["error_ignored"] is True and st["error_ignorable"] is True
    assert outputs(runtime, a.id)["_result"] is False
    assert entry["children"][b.id]["state"] == "FINISHED"


def test_error_ignorable_exception_continues(runtime):
    a = ServiceActivity(component_code="t_raise", error_ignorable=True)
    tree = build_tree(line(a))
    entry = finish(runtime, tree)
    assert entry["children"][a.id]["error_ignored"] is True
    assert "boom from t_raise" in outputs(runtime, a.id)["ex_data"]


def test_pipeline_states_times_and_root_entry(runtime):
    tree = build_tree(line(ServiceActivity(component_code="example_component")))
    entry = wait_pipeline(runtime, run(runtime, tree))
    assert entry["id"] == tree["id"]
    assert entry["root_id"] == tree["id"] and entry["root_id:"] == tree["id"]
    for key in ("created_time", "started_time", "archived_time"):
        assert isinstance(entry[key], datetime) and entry[key].tzinfo is not None
    assert entry["created_time"] <= entry["started_time"] <= entry["archived_time"]
