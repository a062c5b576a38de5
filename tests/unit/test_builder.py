"""The builder DSL: element chaining and the exact tree shape build_tree produces."""

from __future__ import annotations

import json
import re

import pytest

from culm import builder
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    DataInput,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ExecutableEndEvent,
    InitializedRewritableNodeOutput,
    NodeOutput,
    ParallelGateway,
    Params,
    RewritableNodeOutput,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.model.validator import process_tree, validate_tree

pytestmark = pytest.mark.timeout(30)
ID = re.compile(r"^[pef][0-9a-f]{32}$")


def _act() -> ServiceActivity:
    return ServiceActivity(component_code="c")


def flow_between(tree: dict, source: str, target: str) -> str:
    matches = [f["id"] for f in tree["flows"].values() if (f["source"], f["target"]) == (source, target)]
    assert len(matches) == 1
    return matches[0]


def test_public_module_exports_the_dsl():
    for name in ("EmptyStartEvent", "ServiceActivity", "SubProcess", "ExclusiveGateway", "Var", "build_tree"):
        assert name in builder.__all__
        assert hasattr(builder, name)


def test_linear_tree_shape():
    start, end = EmptyStartEvent(), EmptyEndEvent()
    act = ServiceActivity(component_code="debug", name="act")
    act.component.inputs.msg = Var(type=Var.PLAIN, value="hi")
    act.component.inputs["tpl"] = Var(type=Var.SPLICE, value="${x}")
    start.extend(act).extend(end)
    tree = build_tree(start)

    assert ID.match(tree["id"]) and tree["id"][0] == "p"
    assert set(tree) == {"id", "start_event", "end_event", "activities", "gateways", "flows", "data"}
    f1, f2 = flow_between(tree, start.id, act.id), flow_between(tree, act.id, end.id)
    assert ID.match(f1) and f1[0] == "f" and ID.match(act.id) and act.id[0] == "e"
    assert tree["start_event"] == {
        "id": start.id,
        "name": None,
        "type": "EmptyStartEvent",
        "incoming": "",
        "outgoing": f1,
    }
    assert tree["end_event"] == {
        "id": end.id,
        "name": None,
        "type": "EmptyEndEvent",
        "incoming": [f2],
        "outgoing": "",
    }
    assert tree["activities"][act.id] == {
        "id": act.id,
        "name": "act",
        "type": "ServiceActivity",
        "incoming": [f1],
        "outgoing": f2,
        "component": {
            "code": "debug",
            "inputs": {"msg": {"type": "plain", "value": "hi"}, "tpl": {"type": "splice", "value": "${x}"}},
        },
        "error_ignorable": False,
        "skippable": True,
        "retryable": True,
        "optional": False,
        "timeout": None,
    }
    assert tree["flows"][f1] == {"id": f1, "source": start.id, "target": act.id, "is_default": False}
    assert tree["gateways"] == {}
    assert tree["data"] == {"inputs": {}, "outputs": []}
    json.dumps(tree)
    assert validate_tree(tree) == []


def test_activity_options_version_and_loop_config():
    act = ServiceActivity(
        component_code="c",
        version="v2",
        error_ignorable=True,
        timeout=5,
        skippable=False,
        retryable=False,
        id="act1",
        name="n",
        loop_config={"enable": True, "loop_times": 3},
    )
    start = EmptyStartEvent(id="start")
    start.extend(act).extend(EmptyEndEvent(id="end"))
    node = build_tree(start, id="pipe")["activities"]["act1"]
    assert node["component"] == {"code": "c", "inputs": {}, "version": "v2"}
    assert (node["error_ignorable"], node["timeout"], node["skippable"], node["retryable"]) == (
        True,
        5,
        False,
        False,
    )
    assert node["loop_config"] == {"enable": True, "loop_times": 3}
    plain = ServiceActivity(component_code="c")
    assert "version" not in plain.component_dict()
    assert "loop_config" not in build_tree(_line(plain))["activities"][plain.id]


def _line(*elements):
    start = EmptyStartEvent()
    node = start
    for element in elements:
        node = node.extend(element)
    node.extend(EmptyEndEvent())
    return start


def test_executable_end_event_type():
    end = ExecutableEndEvent(type="MyEnd")
    assert end.type() == "MyEnd"
    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="c")).extend(end)
    tree = build_tree(start)
    assert tree["end_event"]["type"] == "MyEnd" and tree["end_event"]["id"] == end.id


def test_chaining_semantics():
    start, act, pg = EmptyStartEvent(), _act(), ParallelGateway()
    a, b, cg = _act(), _act(), ConvergeGateway()
    assert start.extend(act) is act
    assert act.extend(pg) is pg
    assert pg.connect(a, b) is pg
    assert pg.to(a) is a
    assert pg.converge(cg) is cg
    assert a.outgoing == [cg] and b.outgoing == [cg]
    assert start.tail() is cg
    assert (start.type(), pg.type(), cg.type()) == ("EmptyStartEvent", "ParallelGateway", "ConvergeGateway")
    same = ServiceActivity(id=a.id)
    assert same == a and hash(same) == hash(a) and same != b


def test_converge_follows_first_outgoing_links_to_each_tail():
    pg, a1, a2, b1, cg = ParallelGateway(), _act(), _act(), _act(), ConvergeGateway()
    pg.connect(a1, b1)
    a1.extend(a2)
    pg.converge(cg)
    assert a2.outgoing == [cg] and b1.outgoing == [cg] and a1.outgoing == [a2]


def test_parallel_gateway_shape_and_incoming_lists():
    start, pg, a, b, cg, end = (
        EmptyStartEvent(),
        ParallelGateway(),
        _act(),
        _act(),
        ConvergeGateway(),
        EmptyEndEvent(),
    )
    start.extend(pg).connect(a, b).converge(cg).extend(end)
    tree = build_tree(start)
    fa, fb = flow_between(tree, pg.id, a.id), flow_between(tree, pg.id, b.id)
    assert tree["gateways"][pg.id]["outgoing"] == [fa, fb]
    assert sorted(tree["gateways"][cg.id]["incoming"]) == sorted(
        [flow_between(tree, a.id, cg.id), flow_between(tree, b.id, cg.id)]
    )
    assert isinstance(tree["gateways"][cg.id]["outgoing"], str)
    assert process_tree(tree)["gateways"][pg.id]["converge_gateway_id"] == cg.id


def test_exclusive_gateway_conditions_keyed_by_flow_and_default():
    start, eg, a, b, c, cg, end = (
        EmptyStartEvent(),
        ExclusiveGateway(conditions={0: "${x} == 1"}, default_condition_outgoing=2),
        _act(),
        _act(),
        _act(),
        ConvergeGateway(),
        EmptyEndEvent(),
    )
    eg.add_condition(1, "${x} == 2")
    start.extend(eg).connect(a, b, c).converge(cg).extend(end)
    tree = build_tree(start)
    node = tree["gateways"][eg.id]
    fa, fb, fc = (flow_between(tree, eg.id, x.id) for x in (a, b, c))
    assert node["outgoing"] == [fa, fb, fc]
    assert node["conditions"] == {fa: {"evaluate": "${x} == 1"}, fb: {"evaluate": "${x} == 2"}}
    assert node["default_condition"] == {"flow_id": fc}
    assert node["type"] == "ExclusiveGateway"
    assert validate_tree(tree) == []


def test_exclusive_gateway_without_default_has_no_default_key():
    start, eg = EmptyStartEvent(), ExclusiveGateway(conditions={0: "1 == 1"}, id="eg")
    start.extend(eg).extend(_act()).extend(EmptyEndEvent())
    assert "default_condition" not in build_tree(start)["gateways"]["eg"]


def test_conditional_parallel_gateway_shape():
    start, cpg, a, b, cg, end = (
        EmptyStartEvent(),
        ConditionalParallelGateway(conditions={0: "1 == 1", 1: "2 == 2"}),
        _act(),
        _act(),
        ConvergeGateway(),
        EmptyEndEvent(),
    )
    start.extend(cpg).connect(a, b).converge(cg).extend(end)
    tree = build_tree(start)
    node = tree["gateways"][cpg.id]
    assert node["type"] == "ConditionalParallelGateway"
    assert set(node["conditions"]) == set(node["outgoing"])
    assert process_tree(tree)["gateways"][cpg.id]["converge_gateway_id"] == cg.id


def test_subprocess_with_params_data_and_outputs():
    sub_start, sub_act = EmptyStartEvent(), ServiceActivity(component_code="inner", id="inner_act")
    sub_start.extend(sub_act).extend(EmptyEndEvent())
    sub_data = Data(
        inputs={
            "${a}": DataInput(type=Var.PLAIN, value=1),
            "${out}": NodeOutput(source_act="inner_act", source_key="result"),
        },
        outputs=["${out}"],
    )
    sub = SubProcess(
        start=sub_start, data=sub_data, params=Params({"${a}": Var(type=Var.SPLICE, value="${b}")})
    )
    tree = build_tree(_line(sub), data={"inputs": {"${b}": {"type": "plain", "value": 2}}, "outputs": []})
    node = tree["activities"][sub.id]
    assert node["type"] == "SubProcess" and set(node) == {
        "id",
        "name",
        "type",
        "incoming",
        "outgoing",
        "params",
        "pipeline",
    }
    assert node["params"] == {"${a}": {"type": "splice", "value": "${b}"}}
    inner = node["pipeline"]
    assert inner["id"] == sub.id
    assert inner["data"] == {
        "inputs": {
            "${a}": {"type": "plain", "value": 1, "is_param": True},
            "${out}": {"type": "plain", "value": None, "source_act": "inner_act", "source_key": "result"},
        },
        "outputs": ["${out}"],
        "pre_render_keys": [],
    }
    assert "inner_act" in inner["activities"]
    assert validate_tree(tree) == []
    dict_params = SubProcess(start=sub_start, params={"${a}": Var(type=Var.PLAIN, value=3)})
    assert dict_params.params_dict() == {"${a}": {"type": "plain", "value": 3}}


def test_data_objects_to_dict():
    assert Var(Var.PLAIN, 1).to_dict() == {"type": "plain", "value": 1}
    assert Var(Var.LAZY, "v", custom_type="ip").to_dict() == {
        "type": "lazy",
        "value": "v",
        "custom_type": "ip",
    }
    assert Var(Var.SPLICE, "x", custom_type="ignored").to_dict() == {"type": "splice", "value": "x"}
    assert DataInput(Var.PLAIN, 1).to_dict() == {"type": "plain", "value": 1, "is_param": True}
    assert NodeOutput(source_act="a", source_key="k").to_dict() == {
        "type": "plain",
        "value": None,
        "source_act": "a",
        "source_key": "k",
    }
    refs = [{"source_act": "a", "source_key": "k"}, {"source_act": "b", "source_key": "j"}]
    assert RewritableNodeOutput(source_act=refs, type=Var.SPLICE).to_dict() == {
        "type": "splice",
        "value": None,
        "source_act": refs,
    }
    assert InitializedRewritableNodeOutput(source_act=refs, type=Var.PLAIN, value=7).to_dict() == {
        "type": "plain",
        "value": 7,
        "source_act": refs,
        "need_initialization": True,
    }
    data = Data(inputs={"${x}": Var(Var.PLAIN, 1)}, outputs=["${x}"], pre_render_keys=["${x}"])
    data.inputs["${y}"] = {"type": "plain", "value": 2}
    assert data.to_dict() == {
        "inputs": {"${x}": {"type": "plain", "value": 1}, "${y}": {"type": "plain", "value": 2}},
        "outputs": ["${x}"],
        "pre_render_keys": ["${x}"],
    }
    assert Params({"${p}": Var(Var.PLAIN, 0)}).to_dict() == {"${p}": {"type": "plain", "value": 0}}


def test_build_tree_with_data_object_and_explicit_id():
    tree = build_tree(_line(ServiceActivity(component_code="c")), id="my_pipe", data=Data(outputs=["${o}"]))
    assert tree["id"] == "my_pipe"
    assert tree["data"] == {"inputs": {}, "outputs": ["${o}"], "pre_render_keys": []}


def test_inputs_namespace_attribute_and_item_access():
    act = ServiceActivity(component_code="c")
    act.component.inputs.a = Var(Var.PLAIN, 1)
    assert act.component.inputs["a"] is act.component.inputs.a
    assert "a" in act.component.inputs and list(act.component.inputs) == ["a"]
    with pytest.raises(AttributeError):
        _ = act.component.inputs.missing
    act.component.code = "other"
    assert act.component_dict()["code"] == "other"


def test_loop_back_edges_build_once_per_node():
    start, a, eg, b, end = (
        EmptyStartEvent(),
        _act(),
        ExclusiveGateway(conditions={0: "1==1", 1: "1==0"}),
        _act(),
        EmptyEndEvent(),
    )
    start.extend(a).extend(eg).connect(b, a)
    b.extend(end)
    tree = build_tree(start)
    assert len(tree["activities"]) == 2 and len(tree["flows"]) == 5
    assert len(tree["activities"][a.id]["incoming"]) == 2
    assert validate_tree(tree, cycle_tolerate=True) == []


def test_ten_thousand_node_chain_builds():
    start = EmptyStartEvent()
    node = start
    for _ in range(10_000):
        node = node.extend(ServiceActivity(component_code="c"))
    node.extend(EmptyEndEvent())
    tree = build_tree(start)
    assert len(tree["activities"]) == 10_000 and len(tree["flows"]) == 10_001


def _nested(depth: int) -> tuple[EmptyStartEvent, list[SubProcess]]:
    """A start event whose pipeline holds ``depth`` subprocesses, each inside the one before."""
    inner = EmptyStartEvent()
    inner.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    subs = []
    for _ in range(depth):
        subs.append(SubProcess(start=inner))
        inner = EmptyStartEvent()
        inner.extend(subs[-1]).extend(EmptyEndEvent())
    return inner, subs


def test_deeply_nested_subprocesses_build_and_validation_names_the_one_too_deep():
    # build_tree recursed once per level: a RecursionError at about 1,000 levels.
    start, subs = _nested(3000)
    tree = build_tree(start)
    pipe, depth = tree, 0
    node = next(iter(pipe["activities"].values()))
    while node["type"] == "SubProcess":
        pipe, depth = node["pipeline"], depth + 1
        assert pipe["id"] == node["id"]
        node = next(iter(pipe["activities"].values()))
    assert depth == 3000 and node["component"]["code"] == "example_component"
    problems = validate_tree(tree)
    too_deep = subs[3000 - 65]  # the outermost is the last built: level 65 is 65th from the end
    assert [(p.where, p.message) for p in problems] == [
        (too_deep.id, "subprocesses are nested more than 64 levels deep")]
    start64, _ = _nested(64)
    assert validate_tree(build_tree(start64)) == []


def test_a_subprocess_holding_itself_is_refused_by_name():
    inner = EmptyStartEvent()
    sub = SubProcess(start=inner)
    inner.extend(ServiceActivity(component_code="example_component")).extend(sub).extend(EmptyEndEvent())
    start = EmptyStartEvent()
    start.extend(sub).extend(EmptyEndEvent())
    with pytest.raises(ValueError, match=f"subprocess {sub.id} holds itself"):
        build_tree(start)
