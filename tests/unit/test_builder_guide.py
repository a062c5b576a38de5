"""bamboo's flow builder guide (``docs/user_guide/flow_builder.md``), imports swapped to culm.

Every example of the guide builds as printed there, including the argument names the guide uses
where bamboo's code spells them differently (``condition``, ``source_tag``).
"""

from __future__ import annotations

import pytest

from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    DataInput,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)


def test_extend_connect_converge_and_to_as_the_guide_shows():
    parallel_gateway = ParallelGateway(name="parallel_gateway")
    act_1, act_2, act_3, act_4 = (ServiceActivity(name=f"act_{i}") for i in range(1, 5))
    converge_gateway = ConvergeGateway(name="converge_gateway")

    assert act_3.extend(act_4) is act_4
    assert repr(act_4) == f"<ServiceActivity act_4:{act_4.id}>"
    assert parallel_gateway.connect(act_1, act_2, act_3) is parallel_gateway
    assert parallel_gateway.converge(converge_gateway) is converge_gateway
    assert [a.outgoing for a in (act_1, act_2, act_4)] == [[converge_gateway]] * 3

    other = ParallelGateway(name="parallel_gateway")
    act_5, act_6, act_7, act_8 = (ServiceActivity(name=f"act_{i}") for i in range(5, 9))
    assert other.connect(act_5, act_6).to(act_5).extend(act_7).to(act_6).extend(act_8) is act_8
    assert (other.outgoing, act_5.outgoing, act_6.outgoing) == ([act_5, act_6], [act_7], [act_8])


def test_build_tree_of_the_guide():
    start = EmptyStartEvent(name="start")
    acts = [ServiceActivity(name=f"act_{i}") for i in (1, 2, 3)]
    end = EmptyEndEvent(name="end")
    assert start.extend(acts[0]).extend(acts[1]).extend(acts[2]).extend(end) is end

    tree = build_tree(start_elem=start)

    assert set(tree) >= {"activities", "data", "end_event", "flows", "gateways", "id", "start_event"}
    assert [tree["activities"][a.id]["name"] for a in acts] == ["act_1", "act_2", "act_3"]
    assert tree["activities"][acts[0].id]["component"] == {"code": None, "inputs": {}}
    assert tree["start_event"]["incoming"] == "" and tree["end_event"]["outgoing"] == ""


@pytest.mark.parametrize("gateway_cls", [ExclusiveGateway, ConditionalParallelGateway])
def test_gateways_take_the_guides_condition_argument(gateway_cls):
    gateway = gateway_cls(condition={0: "1 == 1", 1: "1 == 0"})
    a, b = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    start = EmptyStartEvent()
    start.extend(gateway).connect(a, b).to(gateway).converge(ConvergeGateway()).extend(EmptyEndEvent())

    tree = build_tree(start)

    conditions = tree["gateways"][gateway.id]["conditions"]
    flows = tree["gateways"][gateway.id]["outgoing"]
    assert [conditions[f]["evaluate"] for f in flows] == ["1 == 1", "1 == 0"]
    assert gateway_cls(conditions={0: "a"}, condition={0: "b"}).conditions == {0: "a"}


def test_data_input_takes_the_guides_source_tag():
    assert DataInput(type=Var.LAZY, value="x", source_tag="upper_case").to_dict() == {
        "type": "lazy", "value": "x", "custom_type": "upper_case", "is_param": True}
    assert DataInput(Var.PLAIN, 1, source_tag=None).to_dict() == {"type": "plain", "value": 1, "is_param": True}
    assert Data(inputs=None, outputs=None).to_dict()["inputs"] == {}


def test_subprocess_options_of_the_older_builder_are_named_when_unsupported():
    sub = SubProcess(start=EmptyStartEvent(), replace_id=False, template_id=None)
    assert sub.params == {}
    with pytest.raises(ValueError, match="replace_id"):
        SubProcess(start=EmptyStartEvent(), replace_id=True)
    with pytest.raises(ValueError, match="template_id='t1'"):
        SubProcess(template_id="t1")


def test_guide_callback_service_runs_outside_a_pipeline():
    from culm.components import Service
    from culm.components.testing import run_component

    class WaitCallbackService(Service):  # bamboo's component guide, imports swapped
        __need_schedule__ = True

        def execute(self, data, parent_data):
            return True

        def schedule(self, data, parent_data, callback_data=None):
            status = self.callback_data["status"]
            if status < 0:
                data.outputs.ex_data = "task failed with code: %s" % status  # noqa: UP031 - as the guide writes it
                return False
            self.finish_schedule()

    assert run_component(WaitCallbackService, {}, callback_data={"status": 0}).finished is True
    failed = run_component(WaitCallbackService, {}, callback_data={"status": -2})
    assert failed.finished is False and failed.outputs["ex_data"] == "task failed with code: -2"
