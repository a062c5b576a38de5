"""bamboo-pipeline's integration scenarios of plain execution and of data transfer, through culm's
public API (bamboo's ``tests/execution/`` and ``tests/data_transfer/``; see
docs/bamboo-suite-coverage.md). bamboo reads a pipeline's context from its own tables; these tests
read it from ``get_pipeline_debug_info``, where bamboo's COMPUTE type is called ``lazy``.
"""

from __future__ import annotations

import bamboo_suite_components  # noqa: F401 - registers bamboo's test components
import pytest
from bamboo_suite_helpers import assert_exec_data, states_of
from engine_fixtures import children, finish, wait_state

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    DataInput,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    ParallelGateway,
    Params,
    RewritableNodeOutput,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(120)

LOOP_1 = {"_loop": 1, "_inner_loop": 1}
RAN = {"inputs": LOOP_1, "outputs": {**LOOP_1, "_result": True}}
SUB_DONE = {"inputs": {}, "outputs": LOOP_1}


def _sub_done(**params):
    """Execution data of a finished subprocess node given ``params`` (rendered; bamboo's suite reads
    ``{}`` here, its engine and culm's contract keep the rendered params: see the coverage doc)."""
    return {"inputs": params, "outputs": LOOP_1}
NO_DATA = {"inputs": {}, "outputs": {}}


def _debug(**inputs):
    """A debug_node whose inputs are ``{key: Var}``."""
    act = ServiceActivity(component_code="debug_node")
    for key, var in inputs.items():
        setattr(act.component.inputs, key, var)
    return act


def _echoed(**values):
    """Execution data of a debug_node that echoed ``values``."""
    return {"inputs": {**LOOP_1, **values}, "outputs": {**LOOP_1, **values, "_result": True}}


def _context(runtime, pipeline_id):
    """``{key: (type, value)}`` of a pipeline's (or subprocess's) context values."""
    info = api.get_pipeline_debug_info(runtime, pipeline_id)
    assert info.result, info.message
    return {v["key"]: (v["type"], v["value"]) for v in info.data["context_values"]}


def _splice(value):
    return Var(type=Var.SPLICE, value=value)


def _plain(value):
    return Var(type=Var.PLAIN, value=value)


# -- execution -------------------------------------------------------------------------------------
def test_hundred_nodes_in_a_line(runtime):
    start, end = EmptyStartEvent(), EmptyEndEvent()
    acts = [_debug() for _ in range(100)]
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(end)
    pipeline = build_tree(start)
    entry = finish(runtime, pipeline, timeout=60, root_pipeline_data={})
    assert {n: c["state"] for n, c in entry["children"].items()} == {
        n: "FINISHED" for n in [start.id, end.id, *(a.id for a in acts)]}
    assert_exec_data(runtime, {pipeline["id"]: NO_DATA, **{a.id: RAN for a in acts}})


def test_parallel_branches_of_different_lengths(runtime):
    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    acts, additional = [_debug() for _ in range(10)], [_debug() for _ in range(5)]
    for act, more in zip(acts, additional, strict=False):
        act.connect(more)
    start.extend(pg).connect(*acts).converge(cg).extend(end)
    pipeline = build_tree(start)
    entry = finish(runtime, pipeline, root_pipeline_data={})
    assert set(entry["children"]) == {start.id, pg.id, cg.id, end.id, *(a.id for a in acts + additional)}
    assert {c["state"] for c in entry["children"].values()} == {"FINISHED"}
    assert_exec_data(runtime, {pipeline["id"]: NO_DATA, **{a.id: RAN for a in acts + additional}})


def test_nested_parallel_gateways(runtime):
    start, pg_1, pg_2, cg_1, cg_2, end = (EmptyStartEvent(), ParallelGateway(), ParallelGateway(),
                                          ConvergeGateway(), ConvergeGateway(), EmptyEndEvent())
    group_1, group_2 = [_debug() for _ in range(10)], [_debug() for _ in range(10)]
    start.extend(pg_1).connect(pg_2, *group_1).to(pg_2).connect(*group_2).converge(cg_1).to(pg_1).converge(
        cg_2).extend(end)
    pipeline = build_tree(start)
    entry = finish(runtime, pipeline, root_pipeline_data={})
    assert set(entry["children"]) == {start.id, pg_1.id, pg_2.id, cg_1.id, cg_2.id, end.id,
                                      *(a.id for a in group_1 + group_2)}
    assert {c["state"] for c in entry["children"].values()} == {"FINISHED"}
    assert_exec_data(runtime, {pipeline["id"]: NO_DATA, **{a.id: RAN for a in group_1 + group_2}})


def _exclusive(conditions, data=None, **gateway):
    start, cg, end = EmptyStartEvent(), ConvergeGateway(), EmptyEndEvent()
    eg = ExclusiveGateway(conditions=conditions, **gateway)
    acts = [_debug() for _ in conditions]
    start.extend(eg).connect(*acts).converge(cg).extend(end)
    return build_tree(start, data=data), start, eg, acts, cg, end


@pytest.mark.parametrize("how", ["literal", "template", "default"])
def test_exclusive_gateway_takes_one_branch(runtime, how):
    if how == "literal":
        tree = _exclusive({0: "True == True", 1: "True == False", 2: "True == False"})
        taken = 0
    elif how == "template":
        data = Data()
        for key, value in (("${a}", "1"), ("${b}", "0"), ("${c}", "0")):
            data.inputs[key] = _plain(value)
        tree = _exclusive({0: '"${a}" == "1"', 1: '"${b}" == "1"', 2: '"${c}" == "1"', 3: '"${d}" == "1"',
                           4: "True == False"}, data)
        taken = 0
    else:
        tree = _exclusive({i: "True == False" for i in range(5)}, default_condition_outgoing=1)
        taken = 1
    pipeline, start, eg, acts, cg, end = tree
    entry = finish(runtime, pipeline, root_pipeline_data={})
    assert set(entry["children"]) == {start.id, eg.id, acts[taken].id, cg.id, end.id}
    assert {c["state"] for c in entry["children"].values()} == {"FINISHED"}
    assert_exec_data(runtime, {pipeline["id"]: NO_DATA, acts[taken].id: RAN})


def test_nested_exclusive_gateways(runtime):
    start, cg_1, cg_2, end = EmptyStartEvent(), ConvergeGateway(), ConvergeGateway(), EmptyEndEvent()
    eg_1 = ExclusiveGateway(conditions={0: "True == True", 1: "True == False", 2: "True == False"})
    eg_2 = ExclusiveGateway(conditions={0: "True == True", 1: "True == False"})
    group_1, group_2 = [_debug() for _ in range(2)], [_debug() for _ in range(2)]
    start.extend(eg_1).connect(eg_2, *group_1).to(eg_2).connect(*group_2).converge(cg_1).to(eg_1).converge(
        cg_2).extend(end)
    pipeline = build_tree(start)
    entry = finish(runtime, pipeline, root_pipeline_data={})
    assert set(entry["children"]) == {start.id, eg_1.id, eg_2.id, group_2[0].id, cg_1.id, cg_2.id, end.id}
    assert {c["state"] for c in entry["children"].values()} == {"FINISHED"}
    assert_exec_data(runtime, {pipeline["id"]: NO_DATA, group_2[0].id: RAN})


def test_exclusive_gateway_without_a_match_fails(runtime):
    pipeline, start, eg, acts, cg, end = _exclusive({i: "True == False" for i in range(5)})
    api.run_pipeline(runtime, pipeline, root_pipeline_data={})
    wait_state(runtime, eg.id, "FAILED")
    assert states_of(runtime, pipeline["id"], [start.id, eg.id]) == {start.id: "FINISHED", eg.id: "FAILED"}
    assert api.get_pipeline_states(runtime, pipeline["id"]).data[pipeline["id"]]["state"] == "RUNNING"
    assert not ({a.id for a in acts} | {cg.id, end.id}) & set(children(runtime, pipeline["id"]))
    assert_exec_data(runtime, {eg.id: {"inputs": {}, "outputs": {"ex_data": "all conditions of branches are not meet"}}})


def _one_node_subprocess():
    sub_start, sub_act, sub_end = EmptyStartEvent(), _debug(), EmptyEndEvent()
    sub_start.extend(sub_act).extend(sub_end)
    return sub_start, sub_act, sub_end


def test_subprocess(runtime):
    sub_start, sub_act, sub_end = _one_node_subprocess()
    start, subproc, end = EmptyStartEvent(), SubProcess(start=sub_start), EmptyEndEvent()
    start.extend(subproc).extend(end)
    pipeline = build_tree(start)
    entry = finish(runtime, pipeline, root_pipeline_data={})
    assert set(entry["children"]) == {sub_start.id, sub_act.id, sub_end.id, start.id, subproc.id, end.id}
    assert {c["state"] for c in entry["children"].values()} == {"FINISHED"}
    assert_exec_data(runtime, {pipeline["id"]: NO_DATA, sub_act.id: RAN, subproc.id: SUB_DONE})


def test_nested_subprocesses(runtime):
    sub_start, sub_act, sub_end = _one_node_subprocess()
    start, subproc, end = EmptyStartEvent(), SubProcess(start=sub_start), EmptyEndEvent()
    start.extend(subproc).extend(end)
    parent_start, parent_subproc, parent_end = EmptyStartEvent(), SubProcess(start=start), EmptyEndEvent()
    parent_start.extend(parent_subproc).extend(parent_end)
    pipeline = build_tree(parent_start)
    entry = finish(runtime, pipeline, root_pipeline_data={})
    assert set(entry["children"]) == {sub_start.id, sub_act.id, sub_end.id, start.id, subproc.id, end.id,
                                      parent_start.id, parent_subproc.id, parent_end.id}
    assert {c["state"] for c in entry["children"].values()} == {"FINISHED"}
    assert_exec_data(runtime, {pipeline["id"]: NO_DATA, sub_act.id: RAN, subproc.id: SUB_DONE,
                               parent_subproc.id: SUB_DONE})


# -- data transfer ---------------------------------------------------------------------------------
def _line(*acts, data=None):
    start, end = EmptyStartEvent(), EmptyEndEvent()
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(end)
    return build_tree(start, data=data)


def test_all_var_types(runtime):
    act = _debug(param_1=_splice("${constant_1}"), param_2=Var(type=Var.LAZY, custom_type="upper_case", value="abc"),
                 param_3=_plain("normal var"))
    data = Data()
    data.inputs["${constant_1}"] = _plain("value_1")
    pipeline = _line(act, data=data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {act.id: _echoed(param_1="value_1", param_2="ABC", param_3="normal var")})
    info = api.get_pipeline_debug_info(runtime, pipeline["id"]).data["context_values"]
    assert {v["key"]: (v["type"], v["value"], v["code"]) for v in info} == {
        "${constant_1}": ("plain", "value_1", None), f"${{param_2_{act.id}}}": ("lazy", "abc", "upper_case")}


def test_node_refers_to_a_constant(runtime):
    act = _debug(param_1=_splice("${constant_1}"))
    data = Data()
    data.inputs["${constant_1}"] = _plain("value_1")
    pipeline = _line(act, data=data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {act.id: _echoed(param_1="value_1")})
    assert _context(runtime, pipeline["id"]) == {"${constant_1}": ("plain", "value_1")}


def test_node_refers_to_an_output(runtime):
    act_1, act_2 = _debug(param_1=_plain("output_value_1")), _debug(param_2=_splice("${act_1_output}"))
    data = Data()
    data.inputs["${act_1_output}"] = NodeOutput(source_act=act_1.id, source_key="param_1", type=Var.SPLICE, value="")
    pipeline = _line(act_1, act_2, data=data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {act_1.id: _echoed(param_1="output_value_1"), act_2.id: _echoed(param_2="output_value_1")})
    assert _context(runtime, pipeline["id"]) == {"${act_1_output}": ("plain", "output_value_1")}


def test_rewritable_output_takes_the_latest_writer(runtime):
    act_1 = _debug(param_1=_plain("output_value_1"))
    act_2 = _debug(context_var=_splice("${rewritable_output}"), param_2=_plain("output_value_2"))
    act_3 = _debug(context_var=_splice("${rewritable_output}"))
    data = Data()
    data.inputs["${rewritable_output}"] = RewritableNodeOutput(
        source_act=[{"source_act": act_1.id, "source_key": "param_1"}, {"source_act": act_2.id, "source_key": "param_2"}],
        type=Var.SPLICE, value="")
    pipeline = _line(act_1, act_2, act_3, data=data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {act_1.id: _echoed(param_1="output_value_1"),
                               act_2.id: _echoed(param_2="output_value_2", context_var="output_value_1"),
                               act_3.id: _echoed(context_var="output_value_2")})
    assert _context(runtime, pipeline["id"]) == {"${rewritable_output}": ("plain", "output_value_2")}


def _output(act, key, var_type=Var.PLAIN):
    return NodeOutput(source_act=act.id, source_key=key, type=var_type, value="")


def test_node_refers_to_a_subprocess_output(runtime):
    sub_act = _debug(param_1=_plain("from_subprocess"))
    sub_data = Data()
    sub_data.inputs["${act_1_output}"] = _output(sub_act, "param_1")
    sub_data.outputs.append("${act_1_output}")
    sub_start = EmptyStartEvent()
    sub_start.extend(sub_act).extend(EmptyEndEvent())
    subproc = SubProcess(start=sub_start, data=sub_data, params=Params())
    act = _debug(param_1=_splice("${subprocess_output}"))
    data = Data()
    data.inputs["${subprocess_output}"] = _output(subproc, "${act_1_output}")
    pipeline = _line(subproc, act, data=data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {
        sub_act.id: _echoed(param_1="from_subprocess"), act.id: _echoed(param_1="from_subprocess"),
        subproc.id: {"inputs": {}, "outputs": {"${act_1_output}": "from_subprocess", **LOOP_1}}})
    assert _context(runtime, pipeline["id"]) == {"${subprocess_output}": ("plain", "from_subprocess")}
    assert _context(runtime, subproc.id) == {"${act_1_output}": ("plain", "from_subprocess")}


def _exporting(node, exports):
    """A subprocess running ``node`` alone and exporting ``{context key: output key of node}``."""
    data = Data()
    for key, source_key in exports.items():
        data.inputs[key] = _output(node, source_key)
        data.outputs.append(key)
    start = EmptyStartEvent()
    start.extend(node).extend(EmptyEndEvent())
    return SubProcess(start=start, data=data, params=Params())


def test_node_refers_to_outputs_of_nested_subprocesses(runtime):
    inner_act = _debug(param_1=_plain("from_inner_subprocess"), param_2=_plain("from_inner_subprocess_2"))
    inner = _exporting(inner_act, {"${act_1_output}": "param_1", "${act_1_output_2}": "param_2"})
    outer = _exporting(inner, {"${subprocess_output}": "${act_1_output}", "${subprocess_output_2}": "${act_1_output_2}"})
    act = _debug(param_1=_splice("${subprocess_2_output}"), param_2=_splice("${subprocess_2_output_2}"))
    data = Data()
    data.inputs["${subprocess_2_output}"] = _output(outer, "${subprocess_output}")
    data.inputs["${subprocess_2_output_2}"] = _output(outer, "${subprocess_output_2}")
    pipeline = _line(outer, act, data=data)
    finish(runtime, pipeline, root_pipeline_data={})

    values = ("from_inner_subprocess", "from_inner_subprocess_2")
    echoed = _echoed(param_1=values[0], param_2=values[1])
    assert_exec_data(runtime, {
        inner_act.id: echoed, act.id: echoed,
        inner.id: {"inputs": {}, "outputs": {"${act_1_output}": values[0], "${act_1_output_2}": values[1], **LOOP_1}},
        outer.id: {"inputs": {}, "outputs": {"${subprocess_output}": values[0], "${subprocess_output_2}": values[1],
                                             **LOOP_1}}})
    for pid, keys in ((pipeline["id"], ("${subprocess_2_output}", "${subprocess_2_output_2}")),
                      (outer.id, ("${subprocess_output}", "${subprocess_output_2}")),
                      (inner.id, ("${act_1_output}", "${act_1_output_2}"))):
        assert _context(runtime, pid) == {keys[0]: ("plain", values[0]), keys[1]: ("plain", values[1])}


@pytest.mark.parametrize("how", ["plain-param", "splice-param", "default"])
def test_subprocess_refers_to_a_constant(runtime, how):
    sub_act = _debug(param_1=_splice("${sub_constant_1}"))
    sub_data = Data()
    sub_data.inputs["${sub_constant_1}"] = DataInput(type=Var.SPLICE if how == "splice-param" else Var.PLAIN,
                                                     value="default_value")
    sub_start = EmptyStartEvent()
    sub_start.extend(sub_act).extend(EmptyEndEvent())
    params = Params() if how == "default" else Params({"${sub_constant_1}": _splice("${constant_1}")})
    subproc = SubProcess(start=sub_start, data=sub_data, params=params)
    data = Data()
    data.inputs["${constant_1}"] = _plain("value_1")
    pipeline = _line(subproc, data=data)
    finish(runtime, pipeline, root_pipeline_data={})
    want = "default_value" if how == "default" else "value_1"
    params = {} if how == "default" else {"${sub_constant_1}": "value_1"}
    assert_exec_data(runtime, {sub_act.id: _echoed(param_1=want), subproc.id: _sub_done(**params)})
    assert _context(runtime, pipeline["id"]) == {"${constant_1}": ("plain", "value_1")}
    assert _context(runtime, subproc.id) == {"${sub_constant_1}": ("plain", want)}


@pytest.mark.parametrize("same_key", [False, True], ids=["own-keys", "same-key"])
def test_nested_subprocesses_refer_to_a_constant(runtime, same_key):
    inner_key, outer_key = ("${same_key}", "${same_key}") if same_key else ("${sub_constant_1}", "${sub_constant_2}")
    inner_act = _debug(param_1=_splice(inner_key))
    inner_data = Data()
    inner_data.inputs[inner_key] = DataInput(type=Var.PLAIN, value="default_value_1")
    inner_start = EmptyStartEvent()
    inner_start.extend(inner_act).extend(EmptyEndEvent())
    inner = SubProcess(start=inner_start, data=inner_data, params=Params({inner_key: _splice(outer_key)}))
    outer_data = Data()
    outer_data.inputs[outer_key] = DataInput(type=Var.PLAIN, value="default_value_2")
    outer_start = EmptyStartEvent()
    outer_start.extend(inner).extend(EmptyEndEvent())
    outer = SubProcess(start=outer_start, data=outer_data, params=Params({outer_key: _splice("${constant}")}))
    data = Data()
    data.inputs["${constant}"] = _plain("value_3")
    pipeline = _line(outer, data=data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {inner_act.id: _echoed(param_1="value_3"), inner.id: _sub_done(**{inner_key: "value_3"}),
                               outer.id: _sub_done(**{outer_key: "value_3"})})
    assert _context(runtime, pipeline["id"]) == {"${constant}": ("plain", "value_3")}
    assert _context(runtime, inner.id) == {inner_key: ("plain", "value_3")}
    assert _context(runtime, outer.id) == {outer_key: ("plain", "value_3")}


def _subprocess_fed_by(act_1, sub_acts, sub_data):
    sub_start = EmptyStartEvent()
    tail = sub_start
    for sub_act in sub_acts:
        tail = tail.extend(sub_act)
    tail.extend(EmptyEndEvent())
    subproc = SubProcess(start=sub_start, data=sub_data, params=Params({"${sub_constant_1}": _splice("${act_1_output}")}))
    data = Data()
    data.inputs["${act_1_output}"] = _output(act_1, "param_1", Var.SPLICE)
    return subproc, _line(act_1, subproc, data=data)


def test_subprocess_param_refers_to_a_node_output(runtime):
    act_1, sub_act = _debug(param_1=_plain("output_value_1")), _debug(param_1=_splice("${sub_constant_1}"))
    sub_data = Data()
    sub_data.inputs["${sub_constant_1}"] = DataInput(type=Var.PLAIN, value="value_1")
    subproc, pipeline = _subprocess_fed_by(act_1, [sub_act], sub_data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {act_1.id: _echoed(param_1="output_value_1"), sub_act.id: _echoed(param_1="output_value_1"),
                               subproc.id: _sub_done(**{"${sub_constant_1}": "output_value_1"})})
    assert _context(runtime, pipeline["id"]) == {"${act_1_output}": ("plain", "output_value_1")}
    assert _context(runtime, subproc.id) == {"${sub_constant_1}": ("plain", "output_value_1")}


def test_subprocess_node_refers_to_an_output_of_its_own_pipeline(runtime):
    act_1 = _debug(param_1=_plain("output_value_1"))
    sub_act_1 = _debug(param_1=_splice("${sub_constant_1}"), param_2=_plain("sub_var2"))
    sub_act_2 = _debug(param_1=_splice("${ref_sub_act_1_outputs}"))
    sub_data = Data()
    sub_data.inputs["${sub_constant_1}"] = DataInput(type=Var.PLAIN, value="value_1")
    sub_data.inputs["${sub_act_1_outputs}"] = _output(sub_act_1, "param_2", Var.SPLICE)
    sub_data.inputs["${ref_sub_act_1_outputs}"] = _splice("${sub_act_1_outputs}")
    subproc, pipeline = _subprocess_fed_by(act_1, [sub_act_1, sub_act_2], sub_data)
    finish(runtime, pipeline, root_pipeline_data={})
    assert_exec_data(runtime, {
        act_1.id: _echoed(param_1="output_value_1"), sub_act_1.id: _echoed(param_1="output_value_1", param_2="sub_var2"),
        sub_act_2.id: _echoed(param_1="sub_var2"), subproc.id: _sub_done(**{"${sub_constant_1}": "output_value_1"})})
    assert _context(runtime, pipeline["id"]) == {"${act_1_output}": ("plain", "output_value_1")}
    assert _context(runtime, subproc.id) == {
        "${sub_constant_1}": ("plain", "output_value_1"), "${sub_act_1_outputs}": ("plain", "sub_var2"),
        "${ref_sub_act_1_outputs}": ("splice", "${sub_act_1_outputs}")}
