"""bamboo-engine's user guide, example by example, on culm's embedded runtime (SQLite).

Each test rebuilds one example of bamboo-engine's documentation (README quick start, the builder
guide, the orchestration guide, the component guide, the lazy variable guide, the engine API
reference, the custom end event guide) with only the imports swapped, as
``docs/migrating-from-bamboo.md`` maps them, and asserts what the guide says happens: node
states, outputs, context values. The components the guides take for granted (bamboo-pipeline's
``debug_node`` test component and ``upper_case`` lazy variable) come from
``bamboo_suite_components``, which re-creates bamboo-pipeline's test app.
"""

from __future__ import annotations

import datetime
import math

import bamboo_suite_components  # noqa: F401 - registers debug_node, upper_case ...
import pytest
from support import wait_until

from culm import Runtime, api  # bamboo: from bamboo_engine import api; BambooDjangoRuntime
from culm import builder as builder_module  # bamboo: from bamboo_engine import builder
from culm.builder import (  # bamboo: from bamboo_engine.builder import ...
    ConditionalParallelGateway,
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
from culm.components import (  # bamboo: from pipeline.core.flow.activity import ...
    AbstractIntervalGenerator,
    Component,
    Service,
    StaticIntervalGenerator,
)
from culm.variables import LazyVariable  # bamboo: from pipeline.core.data.var import LazyVariable

pytestmark = pytest.mark.timeout(120)

STATE_KEYS = {"id", "state", "root_id:", "parent_id", "version", "loop", "retry", "skip", "error_ignorable",
              "error_ignored", "created_time", "started_time", "archived_time", "children"}


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    # The guides write ``BambooDjangoRuntime()``: the embedded default, here on a file of this test.
    monkeypatch.setenv("CULM_DATABASE_URL", f"sqlite:///{tmp_path / 'docs.db'}")
    rt = Runtime()
    yield rt
    rt.close()


def states_of(runtime, pipeline):
    return api.get_pipeline_states(runtime=runtime, root_id=pipeline["id"]).data


def wait_finished(runtime, pipeline, timeout=20):
    def finished():
        states = states_of(runtime, pipeline)
        return states if states and states[pipeline["id"]]["state"] == "FINISHED" else None

    return wait_until(finished, timeout=timeout, what=f"pipeline {pipeline['id']} did not finish")


def wait_node(runtime, node_id, state, timeout=20):
    def reached():
        found = api.get_children_states(runtime, node_id).data
        return found[node_id] if found and found[node_id]["state"] == state else None

    return wait_until(reached, timeout=timeout, what=f"node {node_id} did not become {state}")


def executed(states, pipeline):
    return {entry["id"] for entry in states[pipeline["id"]]["children"].values()}


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
    act_1.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    pipeline_data = Data()
    pipeline_data.inputs["${input_a}"] = Var(type=Var.PLAIN, value=input_a)
    pipeline_data.inputs["${act_1_output}"] = NodeOutput(type=Var.SPLICE, source_act=act_1.id, source_key="input_a")
    return build_tree(start, data=pipeline_data), act_2, act_3


@pytest.mark.parametrize(("input_a", "taken"), [(0, "act_3"), (-1, "act_2")])
def test_exclusive_gateway_follows_the_node_output(runtime, input_a, taken):
    pipeline, act_2, act_3 = _exclusive_example(input_a)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    ran = executed(wait_finished(runtime, pipeline), pipeline)
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
    act_1.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    pipeline_data = Data()
    pipeline_data.inputs["${input_a}"] = Var(type=Var.PLAIN, value=0)
    pipeline_data.inputs["${act_1_output}"] = NodeOutput(type=Var.SPLICE, source_act=act_1.id, source_key="input_a")
    pipeline = build_tree(start, data=pipeline_data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    ran = executed(wait_finished(runtime, pipeline), pipeline)
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
    act_1.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    pipeline_data = Data()
    pipeline_data.inputs["${input_a}"] = Var(type=Var.PLAIN, value=0)
    pipeline_data.inputs["${act_1_output}"] = NodeOutput(type=Var.SPLICE, source_act=act_1.id, source_key="input_a")
    pipeline = build_tree(start, data=pipeline_data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    ran = executed(wait_finished(runtime, pipeline), pipeline)
    assert subproc_2.id in ran and sub_act_2.id in ran and subproc_1.id not in ran
    assert api.get_execution_data_outputs(runtime, sub_act_2.id).data["sub_input"] == 2


# -- flow_orchestration.md: data exchange -----------------------------------------------------------
def test_data_context_variable_reaches_the_node(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_1.component.inputs.param_1 = Var(type=Var.SPLICE, value="${constant_1}")
    end = EmptyEndEvent()
    start.extend(act_1).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${constant_1}"] = Var(type=Var.PLAIN, value="value_1")
    pipeline = build_tree(start, data=pipeline_data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    assert api.get_execution_data_inputs(runtime, act_1.id).data["param_1"] == "value_1"


def test_splice_lazy_and_plain_inputs(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_1.component.inputs.param_1 = Var(type=Var.SPLICE, value="${constant_1}")
    act_1.component.inputs.param_2 = Var(type=Var.LAZY, custom_type="upper_case", value="abc")
    act_1.component.inputs.param_3 = Var(type=Var.PLAIN, value="normal var")
    end = EmptyEndEvent()
    start.extend(act_1).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${constant_1}"] = Var(type=Var.PLAIN, value="value_1")
    pipeline = build_tree(start, data=pipeline_data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    got = api.get_execution_data_inputs(runtime, act_1.id).data
    assert (got["param_1"], got["param_2"], got["param_3"]) == ("value_1", "ABC", "normal var")


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


def test_node_output_feeds_the_next_node(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_1.component.inputs.param_1 = Var(type=Var.PLAIN, value="output_value_1")
    act_2 = ServiceActivity(component_code="debug_node")
    act_2.component.inputs.param_2 = Var(type=Var.SPLICE, value="${act_1_output}")
    end = EmptyEndEvent()
    start.extend(act_1).extend(act_2).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${act_1_output}"] = NodeOutput(source_act=act_1.id, source_key="param_1", type=Var.SPLICE,
                                                         value="")
    pipeline = build_tree(start, data=pipeline_data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    assert api.get_execution_data_inputs(runtime, act_2.id).data["param_2"] == "output_value_1"


def test_rewritable_node_output_takes_the_last_writer(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_1.component.inputs.param_1 = Var(type=Var.PLAIN, value="output_value_1")
    act_2 = ServiceActivity(component_code="debug_node")
    act_2.component.inputs.context_var = Var(type=Var.SPLICE, value="${rewritable_output}")
    act_2.component.inputs.param_2 = Var(type=Var.PLAIN, value="output_value_2")
    act_3 = ServiceActivity(component_code="debug_node")
    act_3.component.inputs.context_var = Var(type=Var.SPLICE, value="${rewritable_output}")
    end = EmptyEndEvent()
    start.extend(act_1).extend(act_2).extend(act_3).extend(end)
    pipeline_data = Data()
    pipeline_data.inputs["${rewritable_output}"] = RewritableNodeOutput(source_act=[
        {"source_act": act_1.id, "source_key": "param_1"},
        {"source_act": act_2.id, "source_key": "param_2"}], type=Var.SPLICE, value="")
    pipeline = build_tree(start, data=pipeline_data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    assert api.get_execution_data_inputs(runtime, act_2.id).data["context_var"] == "output_value_1"
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


# -- custom_component.md -----------------------------------------------------------------------------
class FactorialCalculateService(Service):
    def execute(self, data, parent_data):
        n = data.get_one_of_inputs("n")
        if not isinstance(n, int):
            data.outputs.ex_data = "n must be a integer!"
            return False
        data.outputs.factorial_of_n = math.factorial(n)
        return True

    def inputs_format(self):
        return [Service.InputItem(name="integer n", key="n", type="int", required=True)]

    def outputs_format(self):
        return [Service.OutputItem(name="factorial of n", key="factorial_of_n", type="int")]


class FactorialCalculateComponent(Component):
    name = "FactorialCalculateComponent"
    code = "fac_cal_comp"
    bound_service = FactorialCalculateService


@pytest.mark.parametrize(("n", "state"), [(4, "FINISHED"), ("4", "FAILED")])
def test_factorial_component(runtime, n, state):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="fac_cal_comp")
    act.component.inputs.n = Var(type=Var.PLAIN, value=n)
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = builder_module.build_tree(start)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_node(runtime, act.id, state)
    outputs = api.get_execution_data_outputs(runtime, act.id).data
    if state == "FINISHED":
        assert outputs["factorial_of_n"] == 24 and outputs["_result"] is True and outputs["_loop"] == 1
    else:
        assert outputs["ex_data"] == "n must be a integer!" and outputs["_result"] is False
        assert states_of(runtime, pipeline)[pipeline["id"]]["state"] == "RUNNING"
    # As bamboo's, the component's declaration adds the outputs every service has.
    declared = [item["key"] for item in FactorialCalculateComponent.outputs_format()]
    assert declared == ["factorial_of_n", "_result", "_loop", "_inner_loop"]
    assert [item["key"] for item in FactorialCalculateComponent.inputs_format()] == ["n"]


class DocsPollService(Service):
    """The guide's periodic poll: ``_poll_status`` answers 1 (running) twice, then 0 (done)."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def _get_poll_url(self):
        return "http://example.invalid/task/1"

    def _poll_status(self, poll_url, polled):
        return 0 if polled >= 2 else 1

    def execute(self, data, parent_data):
        data.outputs.poll_url = self._get_poll_url()
        return True

    def schedule(self, data, parent_data, callback_data=None):
        polled = data.get_one_of_outputs("polled", 0) + 1
        data.outputs.polled = polled
        status = self._poll_status(data.get_one_of_outputs("poll_url"), polled)
        if status == 0:
            self.finish_schedule()
        elif status < 0:
            data.outputs.ex_data = f"task failed with code: {status}"
            return False
        return True


class DocsPollComponent(Component):
    name = "docs poll"
    code = "docs_guide_poll"
    bound_service = DocsPollService


class LinearIntervalGenerator(AbstractIntervalGenerator):
    def next(self):
        super().next()
        return self.count


def test_polling_component_and_a_custom_interval_generator(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="docs_guide_poll")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    outputs = api.get_execution_data_outputs(runtime, act.id).data
    assert outputs["polled"] == 2 and outputs["poll_url"] == "http://example.invalid/task/1"
    generator = LinearIntervalGenerator()
    assert [generator.next() for _ in range(3)] == [1, 2, 3]


class DocsCallbackService(Service):
    __need_schedule__ = True
    __multi_callback_enabled__ = False

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        status = self.callback_data["status"]
        if status < 0:
            data.outputs.ex_data = f"task failed with code: {status}"
            return False
        self.finish_schedule()


class DocsMultiCallbackService(DocsCallbackService):
    __multi_callback_enabled__ = True

    def schedule(self, data, parent_data, callback_data=None):
        status = self.callback_data["status"]
        if status < 0:
            data.outputs.ex_data = f"task failed with code: {status}"
            return False
        elif status < 1:
            return True
        self.finish_schedule()


class DocsCallbackComponent(Component):
    name = "docs callback"
    code = "docs_guide_callback"
    bound_service = DocsCallbackService


class DocsMultiCallbackComponent(Component):
    name = "docs multi callback"
    code = "docs_guide_multi_callback"
    bound_service = DocsMultiCallbackService


def _one_node(code):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code=code)
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act


@pytest.mark.parametrize(("status", "state"), [(1, "FINISHED"), (-2, "FAILED")])
def test_single_callback_component(runtime, status, state):
    pipeline, act = _one_node("docs_guide_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, act.id, "RUNNING")["version"]
    wait_until(lambda: api.callback(runtime, act.id, version, {"status": status}).result, timeout=20)

    wait_node(runtime, act.id, state)
    if state == "FAILED":
        assert api.get_execution_data_outputs(runtime, act.id).data["ex_data"] == "task failed with code: -2"


def test_multiple_callback_component_finishes_on_the_final_callback(runtime):
    pipeline, act = _one_node("docs_guide_multi_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, act.id, "RUNNING")["version"]

    wait_until(lambda: api.callback(runtime, act.id, version, {"status": 0}).result, timeout=20)
    assert api.callback(runtime, act.id, version, {"status": 0}).result is True
    assert api.callback(runtime, act.id, version, {"status": 1}).result is True

    wait_finished(runtime, pipeline)


# -- lazy_var.md -----------------------------------------------------------------------------------
class FormatSupportCurrentTime(LazyVariable):
    code = "format_support_current_time"
    name = "current time in a chosen format"

    def get_value(self):
        time_format = self.value.get("time_format", "%Y-%m-%d %H:%M:%S").strip()
        return datetime.datetime.now().strftime(time_format)


def test_lazy_variable_reads_its_rendered_value(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    act.component.inputs.today = Var(type=Var.SPLICE, value="${today}")
    start.extend(act).extend(EmptyEndEvent())
    data = Data(inputs={
        "${fmt}": Var(type=Var.PLAIN, value="%Y"),
        "${today}": Var(type=Var.LAZY, custom_type="format_support_current_time", value={"time_format": "${fmt} "}),
    })
    pipeline = build_tree(start, data=data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    assert api.get_execution_data_inputs(runtime, act.id).data["today"] == str(datetime.datetime.now().year)


# -- engine_api.md ---------------------------------------------------------------------------------
def test_engine_api_examples_on_a_waiting_and_a_failed_node(runtime):
    start = EmptyStartEvent()
    first = ServiceActivity(component_code="fac_cal_comp")
    first.component.inputs.n = Var(type=Var.PLAIN, value="not an int")
    waiting = ServiceActivity(component_code="docs_guide_callback")
    start.extend(first).extend(waiting).extend(EmptyEndEvent())
    pipeline = builder_module.build_tree(start)

    assert api.run_pipeline(runtime=runtime, pipeline=pipeline).result is True
    wait_node(runtime, first.id, "FAILED")
    assert api.retry_node(runtime=runtime, node_id=first.id, data={"n": 3}).result is True
    wait_node(runtime, first.id, "FINISHED")
    assert api.get_execution_data_outputs(runtime, first.id).data["factorial_of_n"] == 6
    histories = api.get_node_histories(runtime=runtime, node_id=first.id).data
    assert len(histories) == 1 and histories[0]["loop"] == 1 and histories[0]["skip"] is False
    assert {"id", "node_id", "started_time", "archived_time", "version", "inputs", "outputs"} <= set(histories[0])
    short = api.get_node_short_histories(runtime=runtime, node_id=first.id).data
    assert "inputs" not in short[0] and short[0]["version"] == histories[0]["version"]

    version = wait_node(runtime, waiting.id, "RUNNING")["version"]
    assert api.pause_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result is True
    assert api.resume_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result is True
    assert api.forced_fail_activity(runtime=runtime, node_id=waiting.id, ex_data="forced fail by me").result is True
    failed = wait_node(runtime, waiting.id, "FAILED")
    assert failed["version"] != version
    assert api.get_execution_data_outputs(runtime, waiting.id).data["ex_data"] == "forced fail by me"
    assert api.skip_node(runtime=runtime, node_id=waiting.id).result is True
    states = wait_finished(runtime, pipeline)
    assert states[pipeline["id"]]["children"][waiting.id]["skip"] is True

    both = api.get_execution_data(runtime=runtime, node_id=first.id).data
    assert set(both) == {"inputs", "outputs"} and both["inputs"]["n"] == 3 and both["inputs"]["_loop"] == 1
    raw = api.get_data(runtime=runtime, node_id=first.id).data
    assert raw["inputs"]["n"] == {"need_render": True, "value": 3} and raw["outputs"] == {}
    children = api.get_children_states(runtime=runtime, node_id=pipeline["id"]).data
    assert set(children[pipeline["id"]]["children"]) == set(states[pipeline["id"]]["children"])


def test_engine_api_pause_and_resume_node_appoint(runtime):
    start = EmptyStartEvent()
    waiting = ServiceActivity(component_code="docs_guide_callback")
    act = ServiceActivity(component_code="example_component")
    start.extend(waiting).extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, waiting.id, "RUNNING")["version"]

    assert api.pause_node_appoint(runtime=runtime, node_id=act.id).result is True
    wait_until(lambda: api.callback(runtime, waiting.id, version, {"status": 1}).result, timeout=20)
    wait_until(lambda: api.get_pipeline_debug_info(runtime, pipeline["id"]).data["processes"][0]["suspended"],
               timeout=20)
    assert states_of(runtime, pipeline)[pipeline["id"]]["children"][act.id]["state"] == "SUSPENDED"
    assert api.resume_node_appoint(runtime=runtime, node_id=act.id).result is True
    wait_finished(runtime, pipeline)


def test_engine_api_revoke_pipeline(runtime):
    pipeline, act = _one_node("docs_guide_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    wait_node(runtime, act.id, "RUNNING")

    assert api.revoke_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result is True
    assert states_of(runtime, pipeline)[pipeline["id"]]["state"] == "REVOKED"


def test_engine_api_skip_gateways_and_retry_subprocess(runtime):
    start = EmptyStartEvent()
    eg = ExclusiveGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
    a, b = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    cpg = ConditionalParallelGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
    c, d = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    cg = ConvergeGateway()
    sub_start = EmptyStartEvent()
    sub_start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, params={"${y}": Var(type=Var.LAZY, custom_type="raise_variable", value="")})
    end = EmptyEndEvent()
    start.extend(eg).connect(a, b).to(eg).converge(cpg).connect(c, d).to(cpg).converge(cg).extend(sub).extend(end)
    pipeline = build_tree(start, data=Data(inputs={"${x}": Var(type=Var.PLAIN, value=3)}))

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_node(runtime, eg.id, "FAILED")
    flow_to_b = next(f for f, v in pipeline["flows"].items() if v["source"] == eg.id and v["target"] == b.id)
    assert api.skip_exclusive_gateway(runtime=runtime, node_id=eg.id, flow_id=flow_to_b).result is True
    wait_node(runtime, cpg.id, "FAILED")
    flows = [f for f, v in pipeline["flows"].items() if v["source"] == cpg.id]
    assert api.skip_conditional_parallel_gateway(runtime=runtime, node_id=cpg.id, flow_ids=flows,
                                                 converge_gateway_id=cg.id).result is True
    wait_node(runtime, sub.id, "FAILED")
    assert api.retry_subprocess(runtime=runtime, node_id=sub.id).result is True
    wait_node(runtime, sub.id, "FAILED")
    ran = executed(states_of(runtime, pipeline), pipeline)
    assert {b.id, c.id, d.id} <= ran and a.id not in ran


def test_engine_api_doc_slips_are_refused_not_raised(runtime):
    """Two of the reference's examples pass keywords the functions do not take
    (``run_pipeline(pipeline_id=...)``, ``skip_conditional_parallel_gateway(flow_id=...)``)."""
    res = api.run_pipeline(runtime=runtime, pipeline_id="pipeline id")
    assert res.result is False and "pipeline" in res.message
    res = api.skip_conditional_parallel_gateway(runtime=runtime, node_id="node_id", flow_id="flow_id")
    assert res.result is False and "flow_id" in res.message


def test_get_pipeline_states_while_running_then_finished(runtime):
    pipeline, act = _one_node("docs_guide_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, act.id, "RUNNING")["version"]
    running = states_of(runtime, pipeline)[pipeline["id"]]
    assert running["state"] == "RUNNING" and running["archived_time"] is None

    wait_until(lambda: api.callback(runtime=runtime, node_id=act.id, version=version, data={"status": 1}).result,
               timeout=20)
    done = wait_finished(runtime, pipeline)[pipeline["id"]]
    assert done["archived_time"] >= done["started_time"]


# -- signals.md --------------------------------------------------------------------------------------
def test_the_runtime_signals_the_guide_lists(runtime):
    from culm.signals import (  # bamboo: from pipeline.eri.signals import ...
        execute_interrupt,
        post_set_state,
        pre_service_execute,
        pre_service_schedule,
        schedule_interrupt,
    )

    heard = []

    def on_execute(sender, service, data, parent_data, **kwargs):
        heard.append(("execute", type(service).__name__, data.get_one_of_inputs("who"), parent_data.inputs))

    def on_schedule(sender, service, data, parent_data, callback_data, **kwargs):
        heard.append(("schedule", type(service).__name__, data.get_one_of_inputs("who"), callback_data))

    def on_state(sender, node_id, to_state, version, root_id, parent_id, loop, **kwargs):
        heard.append(("state", node_id, to_state))

    pre_service_execute.connect(on_execute)
    pre_service_schedule.connect(on_schedule)
    post_set_state.connect(on_state)
    try:
        start = EmptyStartEvent()
        act = ServiceActivity(component_code="docs_guide_callback")
        act.component.inputs.who = Var(type=Var.PLAIN, value="bamboo")
        start.extend(act).extend(EmptyEndEvent())
        pipeline = build_tree(start)
        api.run_pipeline(runtime=runtime, pipeline=pipeline, root_pipeline_data={"operator": "admin"})
        version = wait_node(runtime, act.id, "RUNNING")["version"]
        wait_until(lambda: api.callback(runtime, act.id, version, {"status": 1}).result, timeout=20)
        wait_finished(runtime, pipeline)
        runtime.wait_idle(10)
    finally:
        pre_service_execute.disconnect(on_execute)
        pre_service_schedule.disconnect(on_schedule)
        post_set_state.disconnect(on_state)

    assert ("execute", "DocsCallbackService", "bamboo", {"operator": "admin"}) in heard
    assert ("schedule", "DocsCallbackService", "bamboo", {"status": 1}) in heard
    assert ("state", act.id, "FINISHED") in heard
    calls = [h[0] for h in heard if h[0] != "state"]
    assert calls == ["execute", "schedule"]
    assert execute_interrupt.name == "execute_interrupt" and schedule_interrupt.name == "schedule_interrupt"


# -- the guides' habit: a new runtime object wherever one is needed ---------------------------------
def test_runtimes_created_inline_share_one_runner(tmp_path, monkeypatch):
    """The guides write ``api.run_pipeline(runtime=BambooDjangoRuntime(), ...)`` and then poll with
    ``api.get_pipeline_states(BambooDjangoRuntime(), ...)``: each object is dropped at once. They
    must neither start workers of their own nor let a dropped one give up the runner lock while its
    threads go on (two runners on one file)."""
    import gc
    import threading

    from culm import runtime as runtime_module

    db = tmp_path / "inline.db"
    monkeypatch.setenv("CULM_DATABASE_URL", f"sqlite:///{db}")
    start = EmptyStartEvent()
    acts = [ServiceActivity(component_code="pipe_example_component") for _ in range(5)]
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(EmptyEndEvent())
    pipeline = build_tree(start)
    try:
        assert api.run_pipeline(runtime=Runtime(), pipeline=pipeline).result is True
        gc.collect()
        threads = threading.active_count()
        for _ in range(30):
            api.get_pipeline_states(Runtime(), pipeline["id"])
        gc.collect()
        assert threading.active_count() <= threads
        assert Runtime().engine is Runtime().engine
        wait_until(lambda: states_of(Runtime(), pipeline)[pipeline["id"]]["state"] == "FINISHED", timeout=20)
    finally:
        core = runtime_module._SHARED.pop((str(db.resolve()), None), None)  # the process would end here
        if core is not None:
            core.close()


# -- update_node_output.md (contrib "mock") ------------------------------------------------------------
def test_update_node_outputs_before_skipping_a_failed_node(runtime):
    failing, reader = ServiceActivity(component_code="fac_cal_comp"), ServiceActivity(component_code="debug_node")
    failing.component.inputs.n = Var(type=Var.PLAIN, value="no")
    reader.component.inputs.code = Var(type=Var.SPLICE, value="${status_code}")
    start = EmptyStartEvent()
    start.extend(failing).extend(reader).extend(EmptyEndEvent())
    pipeline = build_tree(start, data=Data(inputs={"${status_code}": Var(type=Var.PLAIN, value=200)}))
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    wait_node(runtime, failing.id, "FAILED")

    res = api.update_node_outputs(runtime, pipeline["id"], failing.id, {"${status_code}": 500, "${absent}": 1})
    assert res.result is True and res.data == ["${status_code}"]
    outputs = api.get_execution_data_outputs(runtime, failing.id).data
    assert outputs["status_code"] == 500 and outputs["absent"] == 1 and "ex_data" in outputs
    for bad, fragment in ((("e" + "0" * 32, failing.id), "not"), ((pipeline["id"], reader.id), "has no state")):
        refused = api.update_node_outputs(runtime, *bad, {"${status_code}": 1})
        assert refused.result is False and fragment in refused.message
    refused = api.update_node_outputs(runtime, pipeline["id"], failing.id, {"${_system}": {}})
    assert refused.result is False and "${_system}" in refused.message

    assert api.skip_node(runtime, failing.id).result is True
    wait_finished(runtime, pipeline)
    assert api.get_execution_data_inputs(runtime, reader.id).data["code"] == 500
    late = api.update_node_outputs(runtime, pipeline["id"], failing.id, {"${status_code}": 1})
    assert late.result is False and "FINISHED" in late.message
