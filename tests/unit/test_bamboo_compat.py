"""bamboo users' code runs unchanged (issue 16), in-process parts: builder signatures and reprs,
receivers, demo components, validator names, component test helpers and ignored timeouts. Each
test is written as bamboo's docs write the code, with the imports swapped.
"""

from __future__ import annotations

import unittest
import uuid
import warnings

import pytest
from support import wait_until

from culm import Runtime, api, errors
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
from culm.components import Component, ComponentConflictError, Service, library
from culm.components.builtin import ExampleComponent
from culm.components.testing import ComponentTestCase, ComponentTestMixin, ExecuteAssertion, ScheduleAssertion
from culm.model import ignored
from culm.signals import PipelineEvent, Signal, pipeline_event, post_set_state, receiver

pytestmark = pytest.mark.timeout(60)


def wait_finished(runtime, pipeline_id):
    def finished():
        states = api.get_pipeline_states(runtime, pipeline_id).data
        return states[pipeline_id] if states and states[pipeline_id]["state"] == "FINISHED" else None

    return wait_until(finished, 10, 0.025, what=f"pipeline {pipeline_id} to finish")


# -- gap 1: builder constructors and reprs ---------------------------------------------------------
def test_node_outputs_accept_and_ignore_value():
    out = NodeOutput(type=Var.SPLICE, source_act="e1", source_key="_loop", value="")
    assert out.to_dict() == {"type": "splice", "value": None, "source_act": "e1", "source_key": "_loop"}
    rewritable = RewritableNodeOutput(source_act=[{"source_act": "e1", "source_key": "k"}], type=Var.PLAIN,
                                      value="ignored")
    assert rewritable.to_dict() == {"type": "plain", "value": None,
                                    "source_act": [{"source_act": "e1", "source_key": "k"}]}
    initialized = InitializedRewritableNodeOutput([{"source_act": "e1", "source_key": "k"}], Var.PLAIN, 5)
    assert initialized.to_dict()["value"] == 5 and initialized.to_dict()["need_initialization"] is True


def test_data_objects_take_bamboos_positional_arguments():
    assert Var(Var.LAZY, "v", "code").to_dict() == {"type": "lazy", "value": "v", "custom_type": "code"}
    assert DataInput(Var.PLAIN, 1).to_dict() == {"type": "plain", "value": 1, "is_param": True}
    assert Data({"${a}": Var(Var.PLAIN, 1)}, ["${a}"], ["${a}"]).to_dict() == {
        "inputs": {"${a}": {"type": "plain", "value": 1}}, "outputs": ["${a}"], "pre_render_keys": ["${a}"]}
    assert Params({"${p}": Var(Var.SPLICE, "${a}")}).to_dict() == {"${p}": {"type": "splice", "value": "${a}"}}


def test_elements_take_bamboos_positional_arguments():
    # ServiceActivity(component_code, error_ignorable, timeout, skippable, retryable, id, name, outgoing)
    act = ServiceActivity("example_component", True, None, False, False, "e_act", "buy ticket")
    assert (act.component.code, act.error_ignorable, act.skippable, act.retryable) == (
        "example_component", True, False, False)
    assert (act.id, act.name) == ("e_act", "buy ticket")
    gateway = ExclusiveGateway({0: "1 == 1", 1: "1 == 0"}, 1, "e_gw", "choose")
    assert (gateway.conditions, gateway.default_condition_outgoing, gateway.id, gateway.name) == (
        {0: "1 == 1", 1: "1 == 0"}, 1, "e_gw", "choose")
    cpg = ConditionalParallelGateway({0: "1 == 1"}, None, "e_cpg")
    assert cpg.id == "e_cpg"
    inner = EmptyStartEvent()
    inner.extend(EmptyEndEvent())
    sub = SubProcess(inner, Data(), {}, None, "e_sub", "sub")
    assert (sub.start, sub.id, sub.name) == (inner, "e_sub", "sub")
    end = ExecutableEndEvent(type="CustomExecutableEndEvent", id="e_end", name="end")
    assert end.type() == "CustomExecutableEndEvent" and end.id == "e_end"
    for cls in (EmptyStartEvent, EmptyEndEvent, ParallelGateway, ConvergeGateway):
        assert cls("e_x", "n").id == "e_x"


def test_elements_print_as_bamboos():
    act = ServiceActivity(component_code="example_component", name="buy ticket", id="e1")
    assert repr(act) == "<ServiceActivity buy ticket:e1>"
    start = EmptyStartEvent(id="e2")
    assert repr(start) == "<EmptyStartEvent None:e2>"
    assert repr([start, act]) == "[<EmptyStartEvent None:e2>, <ServiceActivity buy ticket:e1>]"


def test_service_activity_version_and_loop_are_keywords():
    act = ServiceActivity(component_code="c", version="v2", loop_config={"enable": True, "loop_times": 2})
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    node = build_tree(start)["activities"][act.id]
    assert node["component"]["version"] == "v2" and node["loop_config"]["loop_times"] == 2


# -- gap 3: receivers called the Django way --------------------------------------------------------
def test_signal_calls_receivers_django_style():
    sig = Signal("test")
    calls = []

    def bamboo_receiver(sender, **kwargs):
        calls.append((sender, kwargs))

    class Other:
        pass

    def only_other(sender, **kwargs):
        calls.append(("only_other", sender))

    sig.connect(bamboo_receiver)
    sig.connect(only_other, sender=Other)
    sig.connect(bamboo_receiver)  # connecting twice is a no-op
    responses = sig.send(int, node_id="n1")
    assert calls == [(int, {"signal": sig, "node_id": "n1"})]
    assert [r for r, _ in responses] == [bamboo_receiver]
    sig.send(Other)
    assert calls[-1] == ("only_other", Other)
    assert sig.disconnect(bamboo_receiver) and not sig.disconnect(bamboo_receiver)


def test_receiver_decorator_and_dispatch_uid():
    sig = Signal("test")
    calls = []

    @receiver(sig, dispatch_uid="mine")
    def first(sender, **kwargs):
        calls.append("first")

    sig.connect(lambda sender, **kw: calls.append("dup"), dispatch_uid="mine")
    sig.send(object)
    assert calls == ["first"]
    assert sig.disconnect(dispatch_uid="mine") and not sig.has_receivers


def test_the_rest_of_djangos_signal_surface_that_bamboo_users_call():
    # Code written for bamboo's Django signals guards a costly payload with has_listeners() and
    # tests its receivers with send_robust(); Signal() is also made without a name.
    sig = Signal()
    assert sig.has_listeners() is False

    class Other:
        pass

    def failing(sender, **kwargs):
        raise ValueError("receiver broke")

    sig.connect(failing, sender=Other)
    # As Django's: a receiver for one sender does not count for a send without a sender.
    assert sig.has_listeners() is False
    assert sig.has_listeners(Other) is True and sig.has_listeners(int) is False
    responses = sig.send_robust(sender=Other, node_id="n1")
    assert [r for r, _ in responses] == [failing]
    assert isinstance(responses[0][1], ValueError) and str(responses[0][1]) == "receiver broke"
    assert sig.send_robust(sender=int) == []
    assert sig.disconnect(failing, sender=Other) and not sig.has_listeners(Other)
    sig.connect(failing)
    assert sig.has_listeners() is True and sig.has_listeners(int) is True


def test_receivers_written_for_bamboo_hear_a_run():
    events, states = [], []

    def event_dispatcher(sender, event, **kwargs):  # bamboo's engine_hook_signals guide
        assert isinstance(event, PipelineEvent) and event.as_dict() == {"event_type": event.event_type,
                                                                         "data": event.data}
        events.append(event.event_type)

    @receiver(post_set_state)
    def on_state(sender, node_id, to_state, version, root_id, parent_id, loop, **kwargs):
        states.append((node_id, to_state, kwargs["signal"] is post_set_state))

    pipeline_event.connect(receiver=event_dispatcher)
    try:
        start = EmptyStartEvent()
        act = ServiceActivity(component_code="example_component")
        start.extend(act).extend(EmptyEndEvent())
        pipeline = build_tree(start)
        with Runtime("sqlite:///:memory:") as runtime:
            api.run_pipeline(runtime=runtime, pipeline=pipeline)
            wait_finished(runtime, pipeline["id"])
            runtime.wait_idle(10)
    finally:
        pipeline_event.disconnect(event_dispatcher)
        post_set_state.disconnect(on_state)
    assert events[:2] == ["pre_prepare_run_pipeline", "post_prepare_run_pipeline"]
    assert {"node_enter", "pre_execute", "post_execute", "node_finish", "pipeline_finish"} <= set(events)
    assert (act.id, "FINISHED", True) in states and (pipeline["id"], "FINISHED", True) in states


# -- gap 6: the demo components yield to a user's class --------------------------------------------
@pytest.fixture
def restore_example_component():
    yield
    library.unregister("example_component")
    library.register(ExampleComponent)


def test_users_example_component_replaces_the_demo(restore_example_component):
    # bamboo's "custom component" guide defines its own example_component after the quick start.
    class ExampleService(Service):
        def execute(self, data, parent_data):
            data.set_outputs("greeting", "hello from the user's example_component")
            return True

    class ExampleComponent(Component):  # noqa: F811 - the point is the same name and code
        name = "example component"
        code = "example_component"
        bound_service = ExampleService

    assert library.get("example_component") is ExampleComponent
    with pytest.raises(ComponentConflictError, match="example_component"):
        type("Another", (Component,), {"__module__": "pkg.other", "__qualname__": "Another", "name": "x",
                                       "code": "example_component", "bound_service": ExampleService})

    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_component")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    with Runtime("sqlite:///:memory:") as runtime:
        api.run_pipeline(runtime=runtime, pipeline=pipeline)
        wait_finished(runtime, pipeline["id"])
        out = api.get_execution_data_outputs(runtime, act.id).data
    assert out["greeting"] == "hello from the user's example_component"


def test_demo_redefined_does_not_displace_a_user_class(restore_example_component):
    class Mine(Component):
        name = "mine"
        code = "example_component"
        bound_service = Service

    library.register(ExampleComponent)  # e.g. culm's builtin module reloaded
    assert library.get("example_component") is Mine


# -- gap 7: bamboo's validator names ---------------------------------------------------------------
def line_with_parallel_block():
    start = EmptyStartEvent(id="start")
    act_1 = ServiceActivity(component_code="example_component", id="act_1")
    pg = ParallelGateway(id="pg")
    act_2 = ServiceActivity(component_code="example_component", id="act_2")
    act_3 = ServiceActivity(component_code="example_component", id="act_3")
    cg = ConvergeGateway(id="cg")
    act_4 = ServiceActivity(component_code="example_component", id="act_4")
    end = EmptyEndEvent(id="end")
    start.extend(act_1).extend(pg).connect(act_2, act_3).to(pg).converge(cg).extend(act_4).extend(end)
    return build_tree(start)


def test_start_node_helpers_under_bamboos_names():
    from culm.validator import api as validator_api  # bamboo: from bamboo_engine.validator import api

    pipeline = line_with_parallel_block()
    assert validator_api.get_allowed_start_node_ids(pipeline) == ["start", "act_1", "pg", "act_4"]
    assert validator_api.validate_pipeline_start_node(pipeline, "act_4") is None
    with pytest.raises(errors.StartPositionInvalidException) as info:
        validator_api.validate_pipeline_start_node(pipeline, "act_2")
    assert isinstance(info.value, errors.StartPositionInvalidError) and "act_2" in str(info.value)
    # bamboo gives these as list(set): compare without order.
    assert sorted(validator_api.get_skipped_execute_node_ids(pipeline, "act_4")) == sorted(
        ["start", "act_1", "pg", "act_2", "act_3", "cg"])
    with pytest.raises(errors.StartPositionInvalidError):
        validator_api.get_skipped_execute_node_ids(pipeline, "act_3")
    assert sorted(validator_api.get_skipped_execute_node_ids(pipeline, "act_3", validate=False)) == [
        "act_1", "pg", "start"]


def test_validate_and_process_pipeline_normalises_in_place():
    from culm.validator import validate_and_process_pipeline

    pipeline = line_with_parallel_block()
    validate_and_process_pipeline(pipeline)
    assert pipeline["gateways"]["pg"]["converge_gateway_id"] == "cg"
    assert isinstance(pipeline["end_event"]["incoming"], list)
    del pipeline["flows"][pipeline["activities"]["act_4"]["outgoing"]]
    with pytest.raises(errors.TreeInvalidException) as info:
        validate_and_process_pipeline(pipeline)
    assert "act_4" in str(info.value)


def test_add_sink_type_records_bamboo_declarations():
    from culm import validator

    validator.add_sink_type("DeclaredEndEvent")
    assert "DeclaredEndEvent" in validator.sink_types()
    with pytest.raises(TypeError):
        validator.add_sink_type("")


# -- gap 7: component test helpers as bamboo's "component unit test" guide uses them ---------------
class TheScheduleService(Service):
    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        data.set_outputs("k1", data.get_one_of_inputs("k1"))
        data.set_outputs("request_id", uuid.uuid4().hex)  # not predictable: checked with outputs=None
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.set_outputs("callback", callback_data)
        return True


class TheScheduleComponent(Component):
    name = "the schedule component"
    code = f"bamboo_doc_schedule_{uuid.uuid4().hex[:8]}"
    bound_service = TheScheduleService


class TheScheduleComponentTest(unittest.TestCase, ComponentTestMixin):  # bamboo: django.test.TestCase
    @property
    def component_cls(self):
        return TheScheduleComponent

    @property
    def cases(self):
        return [
            ComponentTestCase(
                name="success case",
                inputs={"k1": "v1"},
                parent_data={},
                execute_assertion=ExecuteAssertion(success=True, outputs=None),
                schedule_assertion=ScheduleAssertion(success=True, callback_data={"ok": 1}, outputs=None),
            )
        ]


@pytest.fixture
def mixin_for():
    """``mixin_for(service_cls, case)``: a ComponentTestMixin over a fresh component of the service."""
    made = []

    def make(service_cls, case):
        component = type("Probe", (Component,), {"name": "probe", "code": f"bamboo_doc_{uuid.uuid4().hex[:8]}",
                                                 "bound_service": service_cls})
        made.append(component.code)

        class Test(ComponentTestMixin):
            def component_cls(self):
                return component

            def cases(self):
                return [case]

        return Test()

    yield make
    for code in made:
        library.unregister(code)


def test_outputs_none_still_checks_success(mixin_for):
    class FailingService(Service):
        def execute(self, data, parent_data):
            return False

    test = mixin_for(FailingService, ComponentTestCase(
        name="wrongly expects success", inputs={}, parent_data={},
        execute_assertion=ExecuteAssertion(success=True, outputs=None), schedule_assertion=None))
    with pytest.raises(AssertionError, match="(?s)wrongly expects success.*success is False"):
        test.test_component()


# -- gap 8: timeouts are accepted, ignored, and said to be ignored ---------------------------------
def test_ignored_timeout_warns_once_per_process(caplog):
    def with_timeout():
        start = EmptyStartEvent()
        act = ServiceActivity(component_code="example_component", timeout=5)
        start.extend(act).extend(EmptyEndEvent())
        return act, build_tree(start)

    ignored._reset_for_tests()
    act, pipeline = with_timeout()
    with Runtime("sqlite:///:memory:") as runtime:
        with pytest.warns(ignored.IgnoredSettingWarning, match=f"{act.id}.*'timeout'.*ignores"):
            assert api.run_pipeline(runtime, pipeline).result
        assert node_finished_in_time(runtime, pipeline["id"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert api.run_pipeline(runtime, with_timeout()[1]).result
    assert sum("ignores" in r.getMessage() for r in caplog.records) == 1


def test_ignored_timeout_is_found_in_subprocesses_and_timeout_config_is_not_ignored():
    inner_start = EmptyStartEvent()
    inner = ServiceActivity(component_code="example_component", timeout=3,
                            timeout_config={"enable": True, "action": "forced_fail", "seconds": 3})
    inner_start.extend(inner).extend(EmptyEndEvent())
    start = EmptyStartEvent()
    start.extend(SubProcess(start=inner_start)).extend(EmptyEndEvent())
    # timeout_config is enforced (docs/node-timeout.md): only bamboo-engine's `timeout` is ignored.
    assert list(ignored.ignored_timeouts(build_tree(start))) == [(inner.id, "timeout")]


def node_finished_in_time(runtime, pipeline_id):
    # The timeout is not enforced: the run finishes as it would without one.
    return wait_finished(runtime, pipeline_id)["state"] == "FINISHED"


def test_call_assertion_names_a_mock_by_its_dotted_path(mixin_for):
    import os

    from culm.components.testing import Call, CallAssertion, Patcher

    class ProbeService(Service):
        def execute(self, data, parent_data):
            data.set_outputs("exists", os.path.exists(data.get_one_of_inputs("path")))
            return True

    mixin_for(ProbeService, ComponentTestCase(
        name="patched", inputs={"path": "/nowhere"}, parent_data={},
        execute_assertion=ExecuteAssertion(success=True, outputs={"exists": True}),
        schedule_assertion=None,
        patchers=[Patcher(target="os.path.exists", return_value=True)],
        # the same mock, named by another path to it (bamboo imports the dotted path)
        execute_call_assertion=[CallAssertion(func="posixpath.exists", calls=[Call("/nowhere")])],
    )).test_component()
