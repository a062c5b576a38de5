"""bamboo-engine's user guide, example by example, on culm's embedded runtime (SQLite) and on
``culm worker`` processes started as the acceptance harness starts them (PostgreSQL + Redis, MariaDB +
RabbitMQ; the components from ``$CULM_IMPORTS``, ``bamboo_docs_support.DOCS_IMPORTS``): the README
quick start, the builder guide, the built tree's schema guide (its example tree runs as pasted)
and the orchestration guide, its validity rules included
(``test_bamboo_docs_guides.py`` has the component, lazy variable, engine API, signals, hook
signals, start position and node timeout guides).

Each test rebuilds one example with only the imports swapped, as ``docs/migrating-from-bamboo.md``
maps them, and asserts what the guide says happens: node states, outputs, context values. The
components the guides take for granted (bamboo-pipeline's ``debug_node`` test component and
``upper_case`` lazy variable) come from ``bamboo_suite_components``, which re-creates
bamboo-pipeline's test app.
"""

# ruff: noqa: F403, F405 - the guides import the builder with a star, as here

from __future__ import annotations

import datetime

import bamboo_suite_components  # noqa: F401 - registers debug_node, upper_case ...
import pytest
from bamboo_docs_support import (  # noqa: F401
    STATE_KEYS,
    docs_harness,
    docs_runtime,
    executed,
    inputs_after_run,
    states_of,
    wait_finished,
)

from culm import api  # bamboo: from bamboo_engine import api
from culm import builder as builder_module  # bamboo: from bamboo_engine import builder
from culm.builder import *  # bamboo: from bamboo_engine.builder import *

pytestmark = pytest.mark.timeout(120)


# -- README: quick start ---------------------------------------------------------------------------
def test_quick_start_runs_three_nodes_to_finished(runtime):
    from culm.builder import builder  # the quick start's star import brings ``builder`` along

    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_component")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = builder.build_tree(start)

    assert api.run_pipeline(runtime=runtime, pipeline=pipeline).result is True
    states = wait_finished(runtime, pipeline)

    root = states[pipeline["id"]]
    assert STATE_KEYS <= set(root)
    assert root["root_id:"] == root["parent_id"] == pipeline["id"]
    assert root["loop"] == 1 and root["retry"] == 0 and root["skip"] is False
    assert isinstance(root["created_time"], datetime.datetime) and root["created_time"].tzinfo is not None
    assert {start.id, act.id, end.id} == set(root["children"])
    for child in root["children"].values():
        assert child["state"] == "FINISHED" and child["parent_id"] == pipeline["id"]
        assert STATE_KEYS <= set(child) and child["children"] == {}


# -- flow_builder.md -------------------------------------------------------------------------------
def test_builder_chaining_methods_return_what_the_guide_shows():
    act_1 = ServiceActivity(name="act_1")
    act_2 = ServiceActivity(name="act_2")
    assert act_1.extend(act_2) is act_2
    assert repr(act_2) == f"<ServiceActivity act_2:{act_2.id}>"

    pg = ParallelGateway(name="parallel_gateway")
    a, b, c = (ServiceActivity(name=f"act_{i}") for i in (1, 2, 3))
    assert pg.connect(a, b, c) is pg
    assert pg.outgoing == [a, b, c]

    d = ServiceActivity(name="act_4")
    cg = ConvergeGateway(name="converge_gateway")
    c.extend(d)
    assert pg.converge(cg) is cg
    assert [x.outgoing for x in (a, b, d)] == [[cg], [cg], [cg]]

    pg2 = ParallelGateway(name="parallel_gateway")
    e, f, g, h = (ServiceActivity(name=f"act_{i}") for i in (1, 2, 3, 4))
    assert pg2.connect(e, f).to(e).extend(g).to(f).extend(h) is h
    assert pg2.outgoing == [e, f] and e.outgoing == [g] and f.outgoing == [h]


def test_build_tree_from_start_elem_gives_the_documented_structure():
    start = EmptyStartEvent(name="start")
    acts = [ServiceActivity(name=f"act_{i}") for i in (1, 2, 3)]
    end = EmptyEndEvent(name="end")
    assert start.extend(acts[0]).extend(acts[1]).extend(acts[2]).extend(end) is end

    tree = builder_module.build_tree(start_elem=start)

    assert set(tree) >= {"activities", "data", "end_event", "flows", "gateways", "id", "start_event"}
    assert tree["start_event"]["incoming"] == "" and tree["start_event"]["name"] == "start"
    assert tree["end_event"]["outgoing"] == "" and tree["end_event"]["type"] == "EmptyEndEvent"
    assert tree["gateways"] == {} and tree["data"]["inputs"] == {}
    assert len(tree["flows"]) == 4
    for flow in tree["flows"].values():
        assert flow["is_default"] is False and set(flow) == {"id", "source", "target", "is_default"}
    for act in acts:
        node = tree["activities"][act.id]
        assert node["component"] == {"code": None, "inputs": {}}
        assert node["name"] == act.name and node["optional"] is False and node["error_ignorable"] is False
        assert node["type"] == "ServiceActivity" and isinstance(node["incoming"], list)


# -- flow_orchestration.md: gateways ---------------------------------------------------------------
def fed_by_act_1(start, act_1, input_a):
    """The data exchange of the guide's gateway examples: act_1 reads ``${input_a}`` and its
    ``input_a`` output becomes ``${act_1_output}``, which the gateway's conditions read."""
    act_1.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    pipeline_data = Data()
    pipeline_data.inputs["${input_a}"] = Var(type=Var.PLAIN, value=input_a)
    pipeline_data.inputs["${act_1_output}"] = NodeOutput(type=Var.SPLICE, source_act=act_1.id, source_key="input_a")
    return build_tree(start, data=pipeline_data)


def run_to_the_end(runtime, pipeline):
    """Run ``pipeline`` until it FINISHED; the ids of the nodes it reached."""
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    return executed(wait_finished(runtime, pipeline), pipeline)


def test_parallel_gateway_runs_every_branch(runtime):
    start = EmptyStartEvent()
    pg = ParallelGateway()
    acts = [ServiceActivity(component_code="pipe_example_component", name=f"act_{i}") for i in (1, 2, 3)]
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(pg).connect(*acts).to(pg).converge(cg).extend(end)
    pipeline = build_tree(start)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    states = wait_finished(runtime, pipeline)
    assert executed(states, pipeline) == {start.id, pg.id, cg.id, end.id, *(a.id for a in acts)}


def _exclusive_example(input_a):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="pipe_example_component", name="act_1")
    eg = ExclusiveGateway(conditions={0: "${act_1_output} < 0", 1: "${act_1_output} >= 0"}, name="act_2 or act_3")
    act_2 = ServiceActivity(component_code="pipe_example_component", name="act_2")
    act_3 = ServiceActivity(component_code="pipe_example_component", name="act_3")
    end = EmptyEndEvent()
    start.extend(act_1).extend(eg).connect(act_2, act_3).to(eg).converge(end)
    return fed_by_act_1(start, act_1, input_a), act_2, act_3


@pytest.mark.parametrize(("input_a", "taken"), [(0, "act_3"), (-1, "act_2")])
def test_exclusive_gateway_follows_the_node_output(runtime, input_a, taken):
    pipeline, act_2, act_3 = _exclusive_example(input_a)

    ran = run_to_the_end(runtime, pipeline)
    chosen, other = (act_3, act_2) if taken == "act_3" else (act_2, act_3)
    assert chosen.id in ran and other.id not in ran
    assert api.get_execution_data_outputs(runtime, chosen.id).data["_result"] is True


def test_conditional_parallel_gateway_runs_only_the_true_branches(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="pipe_example_component", name="act_1")
    cpg = ConditionalParallelGateway(
        conditions={0: "${act_1_output} < 0", 1: "${act_1_output} >= 0", 2: "${act_1_output} >= 0"},
        name="[act_2] or [act_3 and act_4]",
    )
    act_2, act_3, act_4 = (ServiceActivity(component_code="pipe_example_component", name=f"act_{i}") for i in (2, 3, 4))
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(act_1).extend(cpg).connect(act_2, act_3, act_4).to(cpg).converge(cg).extend(end)
    pipeline = fed_by_act_1(start, act_1, 0)

    ran = run_to_the_end(runtime, pipeline)
    assert {act_1.id, cpg.id, act_3.id, act_4.id} <= ran and act_2.id not in ran


def test_exclusive_gateway_choosing_between_two_subprocesses(runtime):
    def sub_process(data):
        subproc_start = EmptyStartEvent()
        subproc_act = ServiceActivity(component_code="pipe_example_component", name="sub_act")
        subproc_end = EmptyEndEvent()
        subproc_start.extend(subproc_act).extend(subproc_end)
        subproc_act.component.inputs.sub_input = Var(type=Var.SPLICE, value="${sub_input}")
        return SubProcess(start=subproc_start, data=data), subproc_act

    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="pipe_example_component", name="act_1")
    eg = ExclusiveGateway(conditions={0: "${act_1_output} < 0", 1: "${act_1_output} >= 0"}, name="act_2 or act_3")
    subproc_1, sub_act_1 = sub_process(Data(inputs={"${sub_input}": Var(type=Var.PLAIN, value=1)}))
    subproc_2, sub_act_2 = sub_process(Data(inputs={"${sub_input}": Var(type=Var.PLAIN, value=2)}))
    end = EmptyEndEvent()
    start.extend(act_1).extend(eg).connect(subproc_1, subproc_2).converge(end)
    pipeline = fed_by_act_1(start, act_1, 0)

    ran = run_to_the_end(runtime, pipeline)
    assert subproc_2.id in ran and sub_act_2.id in ran and subproc_1.id not in ran
    assert api.get_execution_data_outputs(runtime, sub_act_2.id).data["sub_input"] == 2


# -- flow_orchestration.md: data exchange -----------------------------------------------------------
@pytest.mark.parametrize("section", ["Data", "Var"])
def test_data_and_var_examples(runtime, section):
    """The Data example (one splice input) and the Var example, which adds a lazy and a plain one."""
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_1.component.inputs.param_1 = Var(type=Var.SPLICE, value="${constant_1}")
    if section == "Var":
        act_1.component.inputs.param_2 = Var(type=Var.LAZY, custom_type="upper_case", value="abc")
        act_1.component.inputs.param_3 = Var(type=Var.PLAIN, value="normal var")
    end = EmptyEndEvent()
    start.extend(act_1).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${constant_1}"] = Var(type=Var.PLAIN, value="value_1")
    pipeline = build_tree(start, data=pipeline_data)

    got = inputs_after_run(runtime, pipeline, act_1)
    assert got["param_1"] == "value_1"
    if section == "Var":
        assert (got["param_2"], got["param_3"]) == ("ABC", "normal var")


def test_lazy_input_becomes_a_generated_context_variable(runtime):
    """bamboo turns a lazy component input into a COMPUTE variable ``${<key>_<node id>}`` of the
    enclosing pipeline's context; the input refers to it (``get_data``) and the context holds it."""
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_1.component.inputs.param_2 = Var(type=Var.LAZY, custom_type="upper_case", value="${word}")
    end = EmptyEndEvent()
    start.extend(act_1).extend(end)
    pipeline = build_tree(start, data=Data(inputs={"${word}": Var(type=Var.PLAIN, value="abc")}))
    generated = f"${{param_2_{act_1.id}}}"

    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    wait_finished(runtime, pipeline)

    assert api.get_data(runtime, act_1.id).data["inputs"]["param_2"] == {"need_render": True, "value": generated}
    info = api.get_pipeline_debug_info(runtime, pipeline["id"]).data
    # Read as bamboo code reads its ContextValue / ProcessInfo objects, and as dicts.
    context = {cv.key: cv for cv in info["contex_values"]}
    assert info["processes"][0].root_pipeline_id == pipeline["id"] and info["processes"][0].dead is True
    assert context[generated].type == "lazy" and context[generated]["code"] == "upper_case"
    assert context[generated]["value"] == "${word}" and "${word}" in context[generated]["references"]
    assert api.get_execution_data_inputs(runtime, act_1.id).data["param_2"] == "ABC"


def test_lazy_subprocess_param_is_generated_in_the_parent_context(runtime):
    sub_start = EmptyStartEvent()
    sub_act = ServiceActivity(component_code="debug_node")
    sub_act.component.inputs.got = Var(type=Var.SPLICE, value="${sub_value}")
    sub_start.extend(sub_act).extend(EmptyEndEvent())
    sub_data = Data(inputs={"${sub_value}": DataInput(type=Var.PLAIN, value="default")})
    params = Params({"${sub_value}": Var(type=Var.LAZY, custom_type="upper_case", value="from parent")})
    subprocess = SubProcess(start=sub_start, data=sub_data, params=params)
    start = EmptyStartEvent()
    start.extend(subprocess).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    generated = f"${{sub_value_{subprocess.id}}}"

    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    wait_finished(runtime, pipeline)

    parent = {cv["key"] for cv in api.get_pipeline_debug_info(runtime, pipeline["id"]).data["context_values"]}
    assert generated in parent
    assert api.get_data(runtime, subprocess.id).data["inputs"]["${sub_value}"]["value"] == generated
    assert api.get_execution_data_inputs(runtime, sub_act.id).data["got"] == "FROM PARENT"


def debug_node(**inputs):
    """An activity of bamboo-pipeline's ``debug_node`` test component with the given inputs."""
    act = ServiceActivity(component_code="debug_node")
    for key, var in inputs.items():
        setattr(act.component.inputs, key, var)
    return act


def test_node_output_feeds_the_next_node(runtime):
    start = EmptyStartEvent()
    act_1 = debug_node(param_1=Var(type=Var.PLAIN, value="output_value_1"))
    act_2 = debug_node(param_2=Var(type=Var.SPLICE, value="${act_1_output}"))
    end = EmptyEndEvent()
    start.extend(act_1).extend(act_2).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${act_1_output}"] = NodeOutput(source_act=act_1.id, source_key="param_1", type=Var.SPLICE,
                                                         value="")
    pipeline = build_tree(start, data=pipeline_data)

    assert inputs_after_run(runtime, pipeline, act_2)["param_2"] == "output_value_1"


def test_rewritable_node_output_takes_the_last_writer(runtime):
    start = EmptyStartEvent()
    act_1 = debug_node(param_1=Var(type=Var.PLAIN, value="output_value_1"))
    act_2 = debug_node(context_var=Var(type=Var.SPLICE, value="${rewritable_output}"),
                       param_2=Var(type=Var.PLAIN, value="output_value_2"))
    act_3 = debug_node(context_var=Var(type=Var.SPLICE, value="${rewritable_output}"))
    end = EmptyEndEvent()
    start.extend(act_1).extend(act_2).extend(act_3).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${rewritable_output}"] = RewritableNodeOutput(source_act=[
        {"source_act": act_1.id, "source_key": "param_1"},
        {"source_act": act_2.id, "source_key": "param_2"}], type=Var.SPLICE, value="")
    pipeline = build_tree(start, data=pipeline_data)

    assert inputs_after_run(runtime, pipeline, act_2)["context_var"] == "output_value_1"
    assert api.get_execution_data_inputs(runtime, act_3.id).data["context_var"] == "output_value_2"


@pytest.mark.parametrize("with_params", [True, False])
def test_data_input_and_params(runtime, with_params):
    sub_start = EmptyStartEvent()
    sub_act_1 = ServiceActivity(component_code="debug_node")
    sub_act_1.component.inputs.param_1 = Var(type=Var.SPLICE, value="${sub_constant_1}")
    sub_end = EmptyEndEvent()
    sub_start.extend(sub_act_1).extend(sub_end)
    sub_pipeline_data = Data()
    sub_pipeline_data.inputs["${sub_constant_1}"] = DataInput(type=Var.PLAIN, value="default_value")
    start = EmptyStartEvent()
    params = Params({"${sub_constant_1}": Var(type=Var.SPLICE, value="${constant_1}")}) if with_params else None
    subprocess = SubProcess(start=sub_start, data=sub_pipeline_data, params=params)
    end = EmptyEndEvent()
    start.extend(subprocess).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${constant_1}"] = Var(type=Var.PLAIN, value="value_1")
    pipeline = build_tree(start, data=pipeline_data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    expected = "value_1" if with_params else "default_value"
    assert api.get_execution_data_inputs(runtime, sub_act_1.id).data["param_1"] == expected


# -- flow_orchestration.md: what makes a pipeline valid ---------------------------------------------
def _acts(n):
    return [ServiceActivity(component_code="example_component") for _ in range(n)]


def test_gateway_pairings_the_guide_allows_run(runtime):
    # Exclusive gateways may share a converge gateway, with each other and with a parallel
    # gateway; an exclusive gateway may have none (a "hanging" one, its branches meet at the end).
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    eg_1 = ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"})
    eg_2 = ExclusiveGateway(conditions={0: "1 == 0", 1: "1 == 1"})
    a, b, c, d = _acts(4)
    hanging = ExclusiveGateway(conditions={0: "1 == 0", 1: "1 == 1"})
    e, f = _acts(2)
    start.extend(pg).connect(a, eg_1)
    eg_1.connect(b, eg_2)
    eg_2.connect(c, d)
    for node in (a, b, c, d):
        node.extend(cg)
    cg.extend(hanging).connect(e, f).converge(end)
    pipeline = build_tree(start)

    ran = run_to_the_end(runtime, pipeline)
    assert {a.id, b.id, cg.id, f.id} <= ran and not {eg_2.id, c.id, d.id, e.id} & ran


def test_structures_the_guide_forbids_are_refused_naming_the_node(runtime):
    def refused(start, node, fragment):
        pipeline = build_tree(start)
        res = api.run_pipeline(runtime=runtime, pipeline=pipeline)
        assert res.result is False and node.id in res.message and fragment in res.message, res.message
        assert not api.get_pipeline_states(runtime=runtime, root_id=pipeline["id"]).data

    # An activity has one outgoing flow.
    start, end = EmptyStartEvent(), EmptyEndEvent()
    a, b, c = _acts(3)
    start.extend(a).connect(b, c)
    b.extend(end)
    c.extend(end)
    refused(start, a, "needs 1 outgoing flow")

    # Every branch of a parallel gateway reaches the one converge gateway it pairs with.
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    a, b = _acts(2)
    start.extend(pg).connect(a, b)
    a.extend(cg).extend(end)
    b.extend(end)
    refused(start, pg, "must reach its converge gateway")

    # A parallel branch may not leave for the main branch except through its converge gateway.
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    eg = ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"})
    a, b = _acts(2)
    start.extend(pg).connect(a, b)
    a.extend(cg)
    b.extend(eg).connect(cg, end)
    cg.extend(end)
    refused(start, eg, "must reach a converge gateway")


# -- builded_pipeline_tree_schema.md ------------------------------------------------------------------
SCHEMA_GUIDE_TREE = {  # the guide's example of a built tree, as a literal (Python's False/None)
    "activities": {"eb456a70affdf47ae9d96c5d196d36b09": {
        "component": {"code": "example_component", "inputs": {}}, "error_ignorable": False,
        "id": "eb456a70affdf47ae9d96c5d196d36b09", "incoming": ["f216d744eae614b71b3ca88002fe81439"], "name": "",
        "optional": False, "outgoing": "f42b0a808b63f4315bb9b51159617797c", "retryable": True, "skippable": True,
        "timeout": None, "type": "ServiceActivity"}},
    "data": {"inputs": {}, "outputs": []},
    "end_event": {"id": "e1f45d04d298a4a1e8510fb6d7dd496d2", "incoming": ["f42b0a808b63f4315bb9b51159617797c"],
                  "name": "", "outgoing": "", "type": "EmptyEndEvent"},
    "flows": {
        "f216d744eae614b71b3ca88002fe81439": {"id": "f216d744eae614b71b3ca88002fe81439", "is_default": False,
                                              "source": "e817acc99284348cf9caa45fe0dd0cff4",
                                              "target": "eb456a70affdf47ae9d96c5d196d36b09"},
        "f42b0a808b63f4315bb9b51159617797c": {"id": "f42b0a808b63f4315bb9b51159617797c", "is_default": False,
                                              "source": "eb456a70affdf47ae9d96c5d196d36b09",
                                              "target": "e1f45d04d298a4a1e8510fb6d7dd496d2"}},
    "gateways": {},
    "id": "pa08352b3bded40768f90912731820b87",
    "start_event": {"id": "e817acc99284348cf9caa45fe0dd0cff4", "incoming": "", "name": "",
                    "outgoing": "f216d744eae614b71b3ca88002fe81439", "type": "EmptyStartEvent"},
}


def test_the_schema_guides_tree_is_what_build_tree_gives_and_runs(runtime):
    import copy

    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_component")
    start.extend(act).extend(EmptyEndEvent())
    built = build_tree(start)
    # Every field the guide's schema names, with its type.
    assert set(SCHEMA_GUIDE_TREE) <= set(built)
    assert set(SCHEMA_GUIDE_TREE["activities"]["eb456a70affdf47ae9d96c5d196d36b09"]) <= set(built["activities"][act.id])
    for key in ("start_event", "end_event"):
        assert set(SCHEMA_GUIDE_TREE[key]) <= set(built[key])
    assert isinstance(built["end_event"]["incoming"], list) and isinstance(built["start_event"]["outgoing"], str)
    assert all(set(flow) == {"id", "is_default", "source", "target"} for flow in built["flows"].values())
    assert built["data"] == {"inputs": {}, "outputs": []}

    # The guide's tree, pasted as it is, runs.
    pipeline = copy.deepcopy(SCHEMA_GUIDE_TREE)
    ran = run_to_the_end(runtime, pipeline)
    assert ran == {"e817acc99284348cf9caa45fe0dd0cff4", "eb456a70affdf47ae9d96c5d196d36b09",
                   "e1f45d04d298a4a1e8510fb6d7dd496d2"}
