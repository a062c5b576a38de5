"""The public contract (``api-contract.md``), line by line, as the acceptance harness reads it: the
names each module exports, the argument names and defaults of every function it gives, the
transition table, the builder's schema, the plugin library and its conflict errors, the validator
helpers, the runtime URLs and the signals' calling convention. The engine behaviours, on every
backend, are in ``test_contract_conformance.py``.
"""

from __future__ import annotations

import importlib
import inspect
import uuid
from typing import Any

import contract_components as cc
import pytest
from contract_support import act, builder_tree, line, start_run, state_of, wait_for
from support import wait_until

import culm
from culm import api

pytestmark = pytest.mark.timeout(300)

EMPTY = inspect.Parameter.empty

# -- the names of each module ---------------------------------------------------------------------
NAMES = {
    "culm": ["Runtime"],
    "culm.api": ["EngineAPIResult", "run_pipeline", "pause_pipeline", "resume_pipeline", "revoke_pipeline",
                 "pause_node_appoint", "resume_node_appoint", "retry_node", "retry_subprocess", "skip_node",
                 "skip_exclusive_gateway", "skip_conditional_parallel_gateway", "forced_fail_activity",
                 "callback", "get_pipeline_states", "get_children_states", "get_execution_data_inputs",
                 "get_execution_data_outputs", "get_execution_data", "get_data", "get_node_histories",
                 "get_node_short_histories", "preview_node_inputs", "update_context_values",
                 "get_pipeline_debug_info", "get_node_debug_info", "get_node_logs"],
    "culm.states": ["CREATED", "READY", "RUNNING", "SUSPENDED", "BLOCKED", "FINISHED", "FAILED", "REVOKED",
                    "ARCHIVED_STATES", "TRANSITIONS", "can_transit"],
    "culm.builder": ["EmptyStartEvent", "EmptyEndEvent", "ExecutableEndEvent", "ServiceActivity", "SubProcess",
                     "ParallelGateway", "ExclusiveGateway", "ConditionalParallelGateway", "ConvergeGateway",
                     "Data", "Params", "Var", "DataInput", "NodeOutput", "RewritableNodeOutput", "build_tree"],
    "culm.components": ["Service", "Component", "ComponentConflictError", "ComponentNotFoundError", "library",
                        "StaticIntervalGenerator", "SquareIntervalGenerator", "NullIntervalGenerator",
                        "DefaultIntervalGenerator"],
    "culm.components.library": ["get", "codes", "versions", "all"],
    "culm.variables": ["LazyVariable", "VariableConflictError"],
    "culm.events": ["ExecutableEndEvent", "EndEventConflictError", "FlowNodeClsFactory"],
    "culm.validator": ["get_allowed_start_node_ids", "validate_pipeline_start_node",
                       "get_skipped_execute_node_ids", "validate_and_process_pipeline", "add_sink_type"],
    # bamboo's code writes both ``from bamboo_engine.validator import api`` and
    # ``from bamboo_engine.validator.api import ...``
    "culm.validator.api": ["get_allowed_start_node_ids", "validate_pipeline_start_node",
                           "get_skipped_execute_node_ids", "validate_and_process_pipeline", "add_sink_type"],
    "culm.errors": ["PluginConflictError", "StartPositionInvalidError", "StartPositionInvalidException",
                    "TreeInvalidError"],
    "culm.signals": ["post_set_state", "pipeline_event"],
    "culm.legacy": ["PipelineParser", "task_service"],
}


@pytest.mark.parametrize("module", list(NAMES))
def test_every_name_is_importable_from_its_module(module):
    mod = importlib.import_module(module)
    missing = [name for name in NAMES[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lacks {missing}"


# (name, default) after ``runtime``; EMPTY = required. The contract allows additions: a trailing
# optional parameter beyond the listed ones, or a default where the contract has none, still calls.
SIGNATURES = {
    "run_pipeline": [("pipeline", EMPTY), ("root_pipeline_data", None), ("root_pipeline_context", None),
                     ("subprocess_context", None), ("cycle_tolerate", False), ("start_node_id", None)],
    "pause_pipeline": [("pipeline_id", EMPTY)], "resume_pipeline": [("pipeline_id", EMPTY)],
    "revoke_pipeline": [("pipeline_id", EMPTY)],
    "pause_node_appoint": [("node_id", EMPTY)], "resume_node_appoint": [("node_id", EMPTY)],
    "retry_node": [("node_id", EMPTY), ("data", None)],
    "retry_subprocess": [("node_id", EMPTY)], "skip_node": [("node_id", EMPTY)],
    "skip_exclusive_gateway": [("node_id", EMPTY), ("flow_id", EMPTY)],
    "skip_conditional_parallel_gateway": [("node_id", EMPTY), ("flow_ids", EMPTY), ("converge_gateway_id", EMPTY)],
    "forced_fail_activity": [("node_id", EMPTY), ("ex_data", EMPTY)],
    "callback": [("node_id", EMPTY), ("version", EMPTY), ("data", EMPTY)],
    "get_pipeline_states": [("root_id", EMPTY), ("flat_children", True)],
    "get_children_states": [("node_id", EMPTY)],
    "get_execution_data_inputs": [("node_id", EMPTY)], "get_execution_data_outputs": [("node_id", EMPTY)],
    "get_execution_data": [("node_id", EMPTY)], "get_data": [("node_id", EMPTY)],
    "get_node_histories": [("node_id", EMPTY), ("loop", -1)],
    "get_node_short_histories": [("node_id", EMPTY), ("loop", -1)],
    "preview_node_inputs": [("pipeline", EMPTY), ("node_id", EMPTY), ("subprocess_stack", ()),
                            ("root_pipeline_data", None), ("parent_params", None)],
    "update_context_values": [("pipeline_id", EMPTY), ("context_values", EMPTY)],
    "get_pipeline_debug_info": [("pipeline_id", EMPTY)], "get_node_debug_info": [("node_id", EMPTY)],
    "get_node_logs": [("node_id", EMPTY), ("version", None)],
}


def _assert_parameters(func: Any, expected: list[tuple[str, Any]], skip: int) -> None:
    params = list(inspect.signature(func).parameters.values())[skip:]
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    assert [p.name for p in named[: len(expected)]] == [name for name, _ in expected], func.__name__
    for param, (name, default) in zip(named, expected, strict=False):
        if default is not EMPTY:
            assert param.default == default, f"{func.__name__}({name}=) defaults to {param.default!r}"
    for extra in named[len(expected):]:
        assert extra.default is not EMPTY, f"{func.__name__} requires an argument the contract lacks: {extra.name}"


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_api_function_arguments(name):
    func = getattr(api, name)
    assert next(iter(inspect.signature(func).parameters)) == "runtime"
    _assert_parameters(func, SIGNATURES[name], skip=1)


def test_runtime_urls_of_the_contract(tmp_path, monkeypatch):
    """Runtime() is SQLite from $CULM_DATABASE_URL or ./culm.db; :memory: and files; a context manager."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CULM_DATABASE_URL", raising=False)
    with culm.Runtime() as rt:
        assert repr(rt) == "Runtime('sqlite:///culm.db', embedded)" and (tmp_path / "culm.db").exists()
    monkeypatch.setenv("CULM_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    with culm.Runtime() as rt:
        assert (tmp_path / "env.db").exists() and api.get_pipeline_states(rt, "x").result
    with culm.Runtime("sqlite:///:memory:") as rt:
        assert repr(rt) == "Runtime('sqlite:///:memory:', embedded)"
        tree = line(act("ct_attrs"))
        wait_for(rt, start_run(rt, tree), "FINISHED")
    assert not list(tmp_path.glob("*memory*"))


def test_result_envelope_attributes():
    res = api.get_data(culm.Runtime("memory://"), "ghost")
    assert isinstance(res, api.EngineAPIResult)
    assert (res.result, type(res.message), res.exc is None or isinstance(res.exc, Exception)) == (False, str, True)
    assert hasattr(res, "data")


def test_states_table_has_a_row_for_every_state():
    from culm import states

    eight = ["CREATED", "READY", "RUNNING", "SUSPENDED", "BLOCKED", "FINISHED", "FAILED", "REVOKED"]
    assert [getattr(states, n) for n in eight] == eight
    assert set(states.ARCHIVED_STATES) == {"FINISHED", "FAILED", "REVOKED"}
    assert set(eight) <= set(states.TRANSITIONS)
    assert states.TRANSITIONS["CREATED"] == frozenset() and states.TRANSITIONS["BLOCKED"] == frozenset()
    for to_states in states.TRANSITIONS.values():
        assert isinstance(to_states, frozenset) and to_states <= set(states.TRANSITIONS)
    assert states.can_transit("READY", "RUNNING") and not states.can_transit("FINISHED", "READY")
    assert states.can_transit("NOPE", "READY") is False and states.can_transit("READY", "NOPE") is False
    # bamboo's other names: the StateType enum and the table as TRANSITION
    assert [states.StateType[n].value for n in eight] == eight and states.TRANSITION is states.TRANSITIONS


# -- builder: bamboo's schema --------------------------------------------------------------------
def test_build_tree_writes_bamboos_schema_with_33_char_ids():
    tree = builder_tree()
    assert set(tree) >= {"id", "start_event", "end_event", "activities", "gateways", "flows", "data"}
    assert len(tree["id"]) == 33 and tree["id"][0] == "p"
    for kind in ("activities", "gateways", "flows"):
        for node_id, node in tree[kind].items():
            assert node["id"] == node_id and len(node_id) == 33, (kind, node_id)
    assert all(f[0] == "f" for f in tree["flows"]) and all(a[0] == "e" for a in tree["activities"])
    assert tree["start_event"]["type"] == "EmptyStartEvent" and tree["start_event"]["incoming"] == ""
    assert isinstance(tree["end_event"]["incoming"], list) and tree["end_event"]["outgoing"] == ""
    act = next(a for a in tree["activities"].values() if a.get("error_ignorable"))
    assert act["type"] == "ServiceActivity" and isinstance(act["incoming"], list) and isinstance(act["outgoing"], str)
    assert act["component"]["code"] == "ct_attrs" and act["component"]["inputs"]["value"] == \
        {"type": "plain", "value": 1}
    assert (act["skippable"], act["retryable"], act["optional"]) == (False, False, False)
    sub = next(a for a in tree["activities"].values() if a["type"] == "SubProcess")
    assert sub["pipeline"]["id"] == sub["id"] and sub["params"]["${sub_in}"]["type"] == "splice"
    assert sub["pipeline"]["data"]["inputs"]["${sub_in}"]["is_param"] is True
    flow = next(iter(tree["flows"].values()))
    assert set(flow) >= {"id", "source", "target", "is_default"}
    eg = next(g for g in tree["gateways"].values() if g["type"] == "ExclusiveGateway")
    assert set(eg["conditions"]) == set(eg["outgoing"]) and all("evaluate" in c for c in eg["conditions"].values())
    assert tree["data"]["outputs"] == ["${out}"] and tree["data"]["inputs"]["${out}"]["source_key"] == "echo"
    import json

    assert json.loads(json.dumps(tree)) == tree
    from culm.validator import validate_and_process_pipeline

    validate_and_process_pipeline(tree)


def test_builder_chaining_methods_return_what_bamboos_do():
    from culm.builder import EmptyStartEvent, ParallelGateway, ServiceActivity

    start, pg, a, b = EmptyStartEvent(), ParallelGateway(), ServiceActivity("x"), ServiceActivity("y")
    assert start.extend(pg) is pg and pg.connect(a, b) is pg and pg.to(a) is a and start.tail() is a
    assert ServiceActivity(component_code="x", version="2").component.version == "2"


# Other functions whose arguments the contract names: (callable, expected, leading parameters to skip).
def _named_signatures() -> dict[str, tuple[Any, list[tuple[str, Any]], int]]:
    from culm import legacy, signals, states, validator
    from culm.builder import Var, build_tree
    from culm.components import DataObject, StaticIntervalGenerator, library
    from culm.events import ExecutableEndEvent, FlowNodeClsFactory
    from culm.variables import LazyVariable

    return {
        "build_tree": (build_tree, [("start", EMPTY), ("id", None), ("data", None)], 0),
        "Var": (Var, [("type", EMPTY), ("value", EMPTY), ("custom_type", None)], 0),
        "StaticIntervalGenerator": (StaticIntervalGenerator, [("seconds", EMPTY)], 0),
        "library.get": (library.get, [("code", EMPTY), ("version", None)], 0),
        "library.versions": (library.versions, [("code", EMPTY)], 0),
        "get_one_of_inputs": (DataObject.get_one_of_inputs, [("key", EMPTY), ("default", None)], 1),
        "get_one_of_outputs": (DataObject.get_one_of_outputs, [("key", EMPTY), ("default", None)], 1),
        "set_outputs": (DataObject.set_outputs, [("key", EMPTY), ("value", EMPTY)], 1),
        "can_transit": (states.can_transit, [("from_state", EMPTY), ("to_state", EMPTY)], 0),
        "LazyVariable.get_value": (LazyVariable.get_value, [], 1),
        "ExecutableEndEvent.execute": (ExecutableEndEvent.execute, [("in_subprocess", EMPTY),
                                                                    ("root_pipeline_id", EMPTY),
                                                                    ("current_pipeline_id", EMPTY)], 1),
        "register_node": (FlowNodeClsFactory.register_node, [("key", EMPTY), ("node_cls", EMPTY)], 0),
        "get_allowed_start_node_ids": (validator.get_allowed_start_node_ids, [("pipeline_tree", EMPTY)], 0),
        "validate_pipeline_start_node": (validator.validate_pipeline_start_node,
                                         [("pipeline", EMPTY), ("node_id", EMPTY)], 0),
        "get_skipped_execute_node_ids": (validator.get_skipped_execute_node_ids,
                                         [("pipeline_tree", EMPTY), ("start_node_id", EMPTY), ("validate", True)], 0),
        "validate_and_process_pipeline": (validator.validate_and_process_pipeline,
                                          [("pipeline", EMPTY), ("cycle_tolerate", False)], 0),
        "add_sink_type": (validator.add_sink_type, [("node_type", EMPTY)], 0),
        "connect": (signals.post_set_state.connect, [("receiver", EMPTY)], 0),
        "disconnect": (signals.post_set_state.disconnect, [("receiver", EMPTY)], 0),
        "PipelineParser": (legacy.PipelineParser, [("pipeline_tree", EMPTY)], 0),
    }


@pytest.mark.parametrize("name", list(_named_signatures()))
def test_named_arguments_of_the_other_modules(name):
    func, expected, skip = _named_signatures()[name]
    _assert_parameters(func, expected, skip)


def test_service_activity_keywords():
    """The contract writes them as keywords; the positional order is bamboo's (``component_code,
    error_ignorable, timeout, skippable, retryable``), so bamboo code passing them by position works."""
    from culm.builder import ServiceActivity

    params = inspect.signature(ServiceActivity).parameters
    expected = {"component_code": None, "version": None, "error_ignorable": False, "timeout": None,
                "skippable": True, "retryable": True}
    assert {name: params[name].default for name in expected} == expected
    assert list(params)[:5] == ["component_code", "error_ignorable", "timeout", "skippable", "retryable"]


def test_bamboos_own_argument_names_still_work():
    """The contract names two arguments unlike bamboo does; both names are taken."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
    from culm.components import StaticIntervalGenerator

    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="ct_attrs")).extend(EmptyEndEvent())
    assert build_tree(start=start, id="p1")["start_event"]["id"] == build_tree(start_elem=start, id="p1")[
        "start_event"]["id"] == start.id
    with pytest.raises(TypeError):
        build_tree()
    with pytest.raises(TypeError):
        build_tree(start, start_elem=start)
    assert StaticIntervalGenerator(seconds=3).next() == StaticIntervalGenerator(interval=3).next() == \
        StaticIntervalGenerator(3).next() == 3
    with pytest.raises(TypeError):
        StaticIntervalGenerator()


# -- components, variables, end events -----------------------------------------------------------
def test_service_methods_and_class_attributes():
    from culm.components import Service

    _assert_parameters(Service.execute, [("data", EMPTY), ("parent_data", EMPTY)], skip=1)
    _assert_parameters(Service.schedule, [("data", EMPTY), ("parent_data", EMPTY), ("callback_data", None)], skip=1)
    for name in ("finish_schedule", "inputs_format", "outputs_format", "InputItem", "OutputItem",
                 "__need_schedule__", "__multi_callback_enabled__", "interval"):
        assert hasattr(Service, name), name


def test_component_library():
    from culm.components import ComponentNotFoundError, library

    assert library.get("ct_attrs") is library.get("ct_attrs", "legacy")
    assert library.get("ct_attrs").bound_service is cc.RuntimeAttrsService
    assert library.get("ct_callback", "2.0") is cc.CallbackComponent
    assert "ct_callback" in library.codes() and library.versions("ct_callback") == ["2.0"]
    assert cc.CallbackComponent in library.all() and ("ct_callback", "2.0") in library
    assert ("ct_callback", "legacy") not in library
    with pytest.raises(ComponentNotFoundError):
        library.get("ct_callback")
    with pytest.raises(ComponentNotFoundError):
        library.get("ct_nowhere", "1")


def test_bamboos_component_library_class_methods():
    """Code written against bamboo-pipeline's ``ComponentLibrary`` class methods keeps working."""
    from culm.components import ComponentNotFoundError
    from culm.components.library import ComponentLibrary

    assert ComponentLibrary.get_component_class("ct_callback", "2.0") is cc.CallbackComponent
    assert ComponentLibrary.get_component_class("ct_attrs") is cc.RuntimeAttrsComponent
    assert ComponentLibrary.get_component("ct_attrs", {"value": 1}).data_dict == {"value": 1}
    assert cc.CallbackComponent in ComponentLibrary.component_list()
    with pytest.raises(ComponentNotFoundError):
        ComponentLibrary.get_component_class("ct_callback")


def _define(base: type, attrs: dict[str, Any], module: str, qualname: str) -> type:
    return type(qualname, (base,), {**attrs, "__module__": module, "__qualname__": qualname})


@pytest.mark.parametrize("kind", ["component", "variable", "end_event"])
def test_conflicting_plugins_raise_and_redefinitions_replace(kind):
    from culm.components import Component, ComponentConflictError, Service
    from culm.errors import PluginConflictError
    from culm.events import EndEventConflictError, ExecutableEndEvent
    from culm.variables import LazyVariable, VariableConflictError

    code = f"ct_conflict_{kind}_{uuid.uuid4().hex[:6]}"
    base, attrs, error = {
        "component": (Component, {"code": code, "name": "n", "bound_service": Service}, ComponentConflictError),
        "variable": (LazyVariable, {"code": code, "get_value": lambda self: 1}, VariableConflictError),
        "end_event": (ExecutableEndEvent, {"code": code, "execute": lambda self, *a: None}, EndEventConflictError),
    }[kind]
    assert issubclass(error, PluginConflictError)
    _define(base, attrs, "ct_mod_a", "First")
    _define(base, attrs, "ct_mod_a", "First")  # the same class again (a reloaded module): no error
    with pytest.raises(error) as info:
        _define(base, attrs, "ct_mod_b", "Second")
    assert "First" in str(info.value) and "Second" in str(info.value)


def test_demo_components_yield_to_users_classes():
    from culm.components import Component, Service, library

    for code in ("example_component", "pipe_example_component"):
        assert (code, "legacy") in library
        demo = library.get(code)
        try:
            mine = _define(Component, {"code": code, "name": "mine", "bound_service": Service}, "users_app", "Mine")
            assert library.get(code) is mine
        finally:  # the other tests of this process run the demo components
            library.unregister(code)
            library.register(demo)


# -- validator ---------------------------------------------------------------------------------
def test_validator_helpers():
    from culm import errors, validator

    tree = builder_tree()
    allowed = validator.get_allowed_start_node_ids(tree)
    acts = list(tree["activities"])
    first = tree["flows"][tree["start_event"]["outgoing"]]["target"]
    assert tree["start_event"]["id"] in allowed and first in allowed
    assert not {a for a in acts if tree["activities"][a]["type"] == "SubProcess"} & set(allowed)
    assert validator.validate_pipeline_start_node(tree, first) is None
    sub = next(a for a in acts if tree["activities"][a]["type"] == "SubProcess")
    with pytest.raises(errors.StartPositionInvalidException) as info:
        validator.validate_pipeline_start_node(tree, sub)
    assert isinstance(info.value, errors.StartPositionInvalidError) and sub in str(info.value)
    assert validator.get_skipped_execute_node_ids(tree, first) == [tree["start_event"]["id"]]
    broken = builder_tree()
    broken["flows"][broken["start_event"]["outgoing"]]["target"] = "ghost"
    broken["end_event"]["id"] = 7
    with pytest.raises(errors.TreeInvalidError) as info:
        validator.validate_and_process_pipeline(broken)
    assert "ghost" in str(info.value)


# -- signals: strong references -------------------------------------------------------------------
def test_signal_receivers_are_held_strongly_and_called_django_style(tmp_path):
    from culm import signals
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    got: list[tuple[Any, Any, dict[str, Any]]] = []

    def make():  # a receiver nothing else references once connected
        def receiver(sender, **kwargs):
            got.append((kwargs.pop("signal"), sender, kwargs))

        return receiver

    signals.post_set_state.connect(make())
    signals.pipeline_event.connect(make())
    import gc

    gc.collect()
    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="ct_attrs")).extend(EmptyEndEvent())
    tree = build_tree(start)
    with culm.Runtime(f"sqlite:///{tmp_path}/s.db") as rt:
        assert api.run_pipeline(rt, tree).result
        wait_until(lambda: state_of(rt, tree["id"]) == "FINISHED", 20, what="pipeline to finish")
        rt.wait_idle(10)
    states = [(kw["node_id"], kw["to_state"]) for sig, _, kw in got if sig is signals.post_set_state]
    assert (tree["id"], "FINISHED") in states and (tree["start_event"]["id"], "FINISHED") in states
    for sig, sender, kw in got:
        if sig is signals.post_set_state:
            assert set(kw) == {"node_id", "to_state", "version", "root_id", "parent_id", "loop"}
            assert isinstance(sender, type)
            if kw["node_id"] == tree["id"]:
                assert kw["parent_id"] == ""
        else:
            assert set(kw) == {"event"} and hasattr(kw["event"], "event_type") and hasattr(kw["event"], "data")
    assert any(sig is signals.pipeline_event for sig, _, _ in got)


def test_refusals_send_nothing_and_a_raising_receiver_changes_nothing(tmp_path):
    from culm import signals

    heard: list[Any] = []

    def listen(sender, **kwargs):
        heard.append(kwargs)

    def explode(sender, **kwargs):
        raise RuntimeError("receiver explodes")

    with culm.Runtime(f"sqlite:///{tmp_path}/r.db") as rt:
        tree = line(act("ct_fail", ok=False))
        node = next(iter(tree["activities"]))
        pid = start_run(rt, tree)
        wait_for(rt, node, "FAILED")
        rt.wait_idle(10)
        for sig in (signals.post_set_state, signals.pipeline_event):
            sig.connect(listen)
            sig.connect(explode)
        try:
            assert not api.resume_pipeline(rt, pid).result and not api.forced_fail_activity(rt, node, "x").result
            assert not api.run_pipeline(rt, tree).result
            assert not api.run_pipeline(rt, line(act("ct_attrs"), id=7)).result
            assert heard == []
            assert api.retry_node(rt, node, data={"ok": True}).result  # its receivers raise: still done
            wait_for(rt, pid, "FINISHED")
            rt.wait_idle(10)
            assert any(kw.get("node_id") == pid and kw.get("to_state") == "FINISHED" for kw in heard)
        finally:
            for sig in (signals.post_set_state, signals.pipeline_event):
                sig.disconnect(listen)
                sig.disconnect(explode)
