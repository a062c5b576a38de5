"""The public contract (``api-contract.md``) checked line by line, as the acceptance harness does.

Written against the contract only: names importable from the stated modules, argument names and
defaults, result shapes, refusals, plugin registration, signals, hooks, the legacy facade and the
command line. The engine behaviours run on embedded SQLite and on PostgreSQL + Redis and MariaDB +
RabbitMQ with ``culm worker`` processes started the way the harness starts them: ``culm worker
--db URL --broker URL`` and nothing else (default queue names, default concurrency), loading the
test plugins through ``$CULM_IMPORTS`` only (``contract_components.py``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import contract_components as cc
import pytest
from backends import AMQP, REDIS, HarnessBackend, reachable, unavailable
from support import wait_until

import culm
from culm import api

pytestmark = pytest.mark.timeout(300)
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
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
        tree = line(act("cc_attrs"))
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


# -- builder: bamboo's schema --------------------------------------------------------------------
def _builder_tree() -> dict[str, Any]:
    from culm.builder import (
        ConvergeGateway,
        Data,
        DataInput,
        EmptyEndEvent,
        EmptyStartEvent,
        ExclusiveGateway,
        NodeOutput,
        ParallelGateway,
        ServiceActivity,
        SubProcess,
        Var,
        build_tree,
    )

    inner = EmptyStartEvent()
    inner_act = ServiceActivity(component_code="cc_attrs")
    inner_act.component.inputs.value = Var(type=Var.SPLICE, value="${sub_in}")
    inner.extend(inner_act).extend(EmptyEndEvent())
    sub = SubProcess(start=inner, data=Data(inputs={"${sub_in}": DataInput(type=Var.PLAIN, value="d")}),
                     params={"${sub_in}": Var(type=Var.SPLICE, value="${top}")})
    start, act = EmptyStartEvent(), ServiceActivity(component_code="cc_attrs", version="legacy", error_ignorable=True,
                                                    timeout=None, skippable=False, retryable=False)
    act.component.inputs.value = Var(type=Var.PLAIN, value=1)
    pg, cg, eg, end = ParallelGateway(), ConvergeGateway(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"}), \
        EmptyEndEvent()
    other = ServiceActivity(component_code="cc_attrs")
    start.extend(act).extend(pg).connect(sub, ServiceActivity(component_code="cc_attrs")).to(pg).converge(cg) \
        .extend(eg).connect(end, other)
    other.extend(end)
    data = Data(inputs={"${top}": Var(type=Var.PLAIN, value="t"),
                        "${out}": NodeOutput(source_act=act.id, source_key="echo")}, outputs=["${out}"])
    return build_tree(start, data=data)


def test_build_tree_writes_bamboos_schema_with_33_char_ids():
    tree = _builder_tree()
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
    assert act["component"]["code"] == "cc_attrs" and act["component"]["inputs"]["value"] == \
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
    start.extend(ServiceActivity(component_code="cc_attrs")).extend(EmptyEndEvent())
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

    assert library.get("cc_attrs") is library.get("cc_attrs", "legacy")
    assert library.get("cc_attrs").bound_service is cc.RuntimeAttrsService
    assert library.get("cc_callback", "2.0") is cc.CallbackComponent
    assert "cc_callback" in library.codes() and library.versions("cc_callback") == ["2.0"]
    assert cc.CallbackComponent in library.all() and ("cc_callback", "2.0") in library
    assert ("cc_callback", "legacy") not in library
    with pytest.raises(ComponentNotFoundError):
        library.get("cc_callback")
    with pytest.raises(ComponentNotFoundError):
        library.get("cc_nowhere", "1")


def _define(base: type, attrs: dict[str, Any], module: str, qualname: str) -> type:
    return type(qualname, (base,), {**attrs, "__module__": module, "__qualname__": qualname})


@pytest.mark.parametrize("kind", ["component", "variable", "end_event"])
def test_conflicting_plugins_raise_and_redefinitions_replace(kind):
    from culm.components import Component, ComponentConflictError, Service
    from culm.errors import PluginConflictError
    from culm.events import EndEventConflictError, ExecutableEndEvent
    from culm.variables import LazyVariable, VariableConflictError

    code = f"cc_conflict_{kind}_{uuid.uuid4().hex[:6]}"
    base, attrs, error = {
        "component": (Component, {"code": code, "name": "n", "bound_service": Service}, ComponentConflictError),
        "variable": (LazyVariable, {"code": code, "get_value": lambda self: 1}, VariableConflictError),
        "end_event": (ExecutableEndEvent, {"code": code, "execute": lambda self, *a: None}, EndEventConflictError),
    }[kind]
    assert issubclass(error, PluginConflictError)
    _define(base, attrs, "cc_mod_a", "First")
    _define(base, attrs, "cc_mod_a", "First")  # the same class again (a reloaded module): no error
    with pytest.raises(error) as info:
        _define(base, attrs, "cc_mod_b", "Second")
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

    tree = _builder_tree()
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
    broken = _builder_tree()
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
    start.extend(ServiceActivity(component_code="cc_attrs")).extend(EmptyEndEvent())
    tree = build_tree(start)
    with culm.Runtime(f"sqlite:///{tmp_path}/s.db") as rt:
        assert api.run_pipeline(rt, tree).result
        wait_until(lambda: _state(rt, tree["id"]) == "FINISHED", 20, what="pipeline to finish")
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
        tree = line(act("cc_fail", ok=False))
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
            assert not api.run_pipeline(rt, line(act("cc_attrs"), id=7)).result
            assert heard == []
            assert api.retry_node(rt, node, data={"ok": True}).result  # its receivers raise: still done
            wait_for(rt, pid, "FINISHED")
            rt.wait_idle(10)
            assert any(kw.get("node_id") == pid and kw.get("to_state") == "FINISHED" for kw in heard)
        finally:
            for sig in (signals.post_set_state, signals.pipeline_event):
                sig.disconnect(listen)
                sig.disconnect(explode)


def _state(rt: Any, node_id: str) -> str | None:
    res = api.get_children_states(rt, node_id)
    assert res.result, res.message
    entry = res.data.get(node_id)
    return entry and entry["state"]


HARNESS = {"postgres-redis": ("postgres", REDIS, 5432, 6379), "mariadb-rabbitmq": ("mariadb", AMQP, 3306, 5672)}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    started: dict[str, HarnessBackend] = {}

    def get(name: str) -> HarnessBackend:
        if name not in started:
            db_kind, broker, db_port, broker_port = HARNESS[name]
            for port in (db_port, broker_port):
                if not reachable("127.0.0.1", port):
                    unavailable(f"{name}: nothing listens on 127.0.0.1:{port}")
            backend = HarnessBackend(name, db_kind, broker, tmp_path_factory.mktemp(f"harness-{name}"),
                                     imports="contract_components")
            started[name] = backend
            backend.setup()
            backend.start_workers(2)
        return started[name]

    yield get
    for backend in started.values():
        backend.teardown()


@pytest.fixture(params=["sqlite", "postgres-redis", "mariadb-rabbitmq"])
def rt(request, tmp_path, harness):
    if request.param == "sqlite":
        with culm.Runtime(f"sqlite:///{tmp_path}/c.db") as runtime:
            yield runtime
        return
    yield harness(request.param).runtime()


def wait_for(rt: Any, node_id: str, *states: str, timeout: float = 30) -> None:
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = _state(rt, node_id)
        return last[0] in states

    try:
        wait_until(check, timeout, 0.05, what=f"{node_id} to be {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {last[0]}") from None


def start_run(rt: Any, tree: dict[str, Any], **kwargs: Any) -> str:
    res = api.run_pipeline(rt, tree, **kwargs)
    assert res.result, res.message
    return tree["id"]


def line(*acts: Any, end: Any = None, **build: Any) -> dict[str, Any]:
    from culm.builder import EmptyEndEvent, EmptyStartEvent, build_tree

    start = EmptyStartEvent()
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(end or EmptyEndEvent())
    return build_tree(start, **build)


def act(code: str, **inputs: Any) -> Any:
    from culm.builder import ServiceActivity, Var

    node = ServiceActivity(component_code=code, version="2.0" if code == "cc_callback" else None)
    for key, value in inputs.items():
        setattr(node.component.inputs, key, value if isinstance(value, Var) else Var(type=Var.PLAIN, value=value))
    return node


STATE_KEYS = {"id", "state", "root_id", "root_id:", "parent_id", "version", "loop", "retry", "skip", "error_ignored",
              "error_ignorable", "created_time", "started_time", "archived_time", "children"}


def _walk(entry: dict[str, Any]):
    yield entry
    for child in entry["children"].values():
        yield from _walk(child)


def test_state_entries_runtime_attributes_and_logs(rt):
    """Shapes of get_pipeline_states (flat and nested), only reached nodes, the runtime attributes
    of a service at root and in a subprocess, data access, get_node_logs."""
    tree = _builder_tree()
    pid = start_run(rt, tree, root_pipeline_data={"who": "me"})
    wait_for(rt, pid, "FINISHED")
    flat = api.get_pipeline_states(rt, pid)
    assert flat.result and set(flat.data) == {pid}
    root = flat.data[pid]
    for entry in _walk(root):
        assert set(entry) >= STATE_KEYS, entry["id"]  # anything may be added
        assert entry["root_id"] == entry["root_id:"] == pid and entry["error_ignorable"] == entry["error_ignored"]
        assert entry["created_time"].tzinfo is not None and entry["archived_time"].tzinfo is not None
        assert entry["started_time"] is None or entry["started_time"].tzinfo is not None
    assert root["parent_id"] == pid and root["state"] == "FINISHED"
    sub = next(a for a in tree["activities"].values() if a["type"] == "SubProcess")
    inner = next(iter(sub["pipeline"]["activities"]))
    unreached = next(a for a, v in tree["activities"].items()
                     if tree["flows"][v["incoming"][0]]["source"] in tree["gateways"]
                     and tree["gateways"][tree["flows"][v["incoming"][0]]["source"]]["type"] == "ExclusiveGateway")
    assert inner in root["children"] and unreached not in root["children"]
    assert all(child["children"] == {} for child in root["children"].values())
    nested = api.get_pipeline_states(rt, pid, flat_children=False).data[pid]
    assert inner not in nested["children"] and inner in nested["children"][sub["id"]]["children"]
    kids = api.get_children_states(rt, sub["id"]).data
    assert set(kids) == {sub["id"]} and inner in kids[sub["id"]]["children"]
    assert kids[sub["id"]]["children"][inner]["parent_id"] == sub["id"]

    first = tree["flows"][tree["start_event"]["outgoing"]]["target"]
    out = api.get_execution_data_outputs(rt, first).data
    version = root["children"][first]["version"]
    assert {k: out[k] for k in ("self_id", "self_version", "self_root_pipeline_id", "self_top_pipeline_id",
                                "self_loop", "self_inner_loop")} == \
        {"self_id": first, "self_version": version, "self_root_pipeline_id": pid, "self_top_pipeline_id": pid,
         "self_loop": 1, "self_inner_loop": 1}
    assert (out["echo"], out["via_item"], out["via_attribute"], out["parent_inputs"]) == (1, 1, 1, {"who": "me"})
    assert out["_result"] is True and out["_loop"] == 1 and out["_inner_loop"] == 1
    inner_out = api.get_execution_data_outputs(rt, inner).data
    assert (inner_out["self_root_pipeline_id"], inner_out["self_top_pipeline_id"], inner_out["echo"]) == \
        (pid, sub["id"], "t")
    assert api.get_execution_data(rt, first).data == {"inputs": api.get_execution_data_inputs(rt, first).data,
                                                      "outputs": out}
    assert api.get_data(rt, first).data["inputs"]["value"] == {"need_render": False, "value": 1}  # plain
    assert api.get_execution_data_outputs(rt, pid).data == {"${out}": 1}
    logs = api.get_node_logs(rt, first)
    assert logs.result and f"attrs of {first}" in logs.data and isinstance(logs.data, str)
    assert api.get_node_logs(rt, first, version).data == logs.data
    assert api.get_node_logs(rt, tree["start_event"]["id"]).data == ""


UNKNOWN_EMPTY = {"get_pipeline_states": {}, "get_children_states": {}, "get_execution_data_inputs": {},
                 "get_execution_data_outputs": {}, "get_node_histories": [], "get_node_short_histories": [],
                 "get_node_logs": ""}
UNKNOWN_REFUSED = {"get_execution_data": (), "get_data": (), "get_node_debug_info": (),
                   "pause_pipeline": (), "resume_pipeline": (), "revoke_pipeline": (), "pause_node_appoint": (),
                   "resume_node_appoint": (), "retry_node": (), "retry_subprocess": (), "skip_node": (),
                   "skip_exclusive_gateway": ("f1",), "skip_conditional_parallel_gateway": (["f1"], "c1"),
                   "forced_fail_activity": ("why",), "callback": ("v1", {}),
                   "update_context_values": ({"${a}": 1},)}


def test_unknown_ids_as_the_contract_says(rt):
    ghost = f"ghost{uuid.uuid4().hex[:8]}"
    for name, empty in UNKNOWN_EMPTY.items():
        res = getattr(api, name)(rt, ghost)
        assert res.result is True and res.data == empty and type(res.data) is type(empty), (name, res)
    for name, extra in UNKNOWN_REFUSED.items():
        res = getattr(api, name)(rt, ghost, *extra)
        assert res.result is False and ghost in res.message, (name, res)


def test_refusals_name_the_id_and_state_and_send_nothing(rt):
    tree = line(act("cc_attrs"))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_for(rt, pid, "FINISHED")
    for name, extra in (("retry_node", ()), ("skip_node", ()), ("forced_fail_activity", ("x",)),
                        ("pause_node_appoint", ()), ("callback", ("v", {}))):
        res = getattr(api, name)(rt, node, *extra)
        assert res.result is False and node in res.message and "FINISHED" in res.message, (name, res.message)
    res = api.pause_pipeline(rt, pid)
    assert res.result is False and pid in res.message and "FINISHED" in res.message, res.message
    again = api.run_pipeline(rt, tree)
    assert again.result is False and pid in again.message


def test_retry_with_new_data_keeps_histories_in_order(rt):
    tree = line(act("cc_fail", ok=False))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_for(rt, node, "FAILED")
    assert _state(rt, pid) == "RUNNING"  # a failed node does not fail its pipeline
    failed = api.get_execution_data_outputs(rt, node).data
    assert failed["_result"] is False and failed["ex_data"] == "cc_fail: ok is false"
    assert api.retry_node(rt, node, data={"ok": False}).result
    wait_until(lambda: api.get_children_states(rt, node).data[node]["retry"] == 1 and _state(rt, node) == "FAILED",
               30, 0.05, what="the first retry to fail")
    assert api.retry_node(rt, node, data={"ok": True}).result
    wait_for(rt, pid, "FINISHED")
    hist = api.get_node_histories(rt, node)
    assert hist.result and len(hist.data) == 2
    for i, h in enumerate(hist.data):
        assert set(h) == {"id", "node_id", "started_time", "archived_time", "loop", "retry", "skip", "version",
                          "inputs", "outputs"}
        assert h["node_id"] == node and h["retry"] == i and h["started_time"].tzinfo is not None
    assert hist.data[0]["archived_time"] <= hist.data[1]["archived_time"]
    assert [h["inputs"]["ok"] for h in hist.data] == [False, False]
    assert api.get_execution_data_inputs(rt, node).data["ok"] is True
    short = api.get_node_short_histories(rt, node).data
    assert [set(h) for h in short] == [{"id", "node_id", "started_time", "archived_time", "loop", "skip",
                                        "version"}] * 2
    assert [h["id"] for h in short] == [h["id"] for h in hist.data]
    assert api.get_node_histories(rt, node, loop=1).data == hist.data
    assert api.get_node_histories(rt, node, loop=2).data == []


def test_callback_takes_the_current_version_and_passes_the_payload(rt):
    tree = line(act("cc_callback"))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_until(lambda: api.get_execution_data_outputs(rt, node).data.get("version_seen"), 30, 0.05,
               what="the node to wait for its callback")
    version = api.get_children_states(rt, node).data[node]["version"]
    wrong = api.callback(rt, node, "v-not-it", {"x": 1})
    assert wrong.result is False and node in wrong.message
    assert api.callback(rt, node, version, {"x": 1}).result
    wait_for(rt, pid, "FINISHED")
    out = api.get_execution_data_outputs(rt, node).data
    assert out["callback_data"] == {"x": 1} and out["version_seen"] == version


def test_lazy_variables_value_pipeline_data_inner_loop(rt):
    from culm.builder import Var

    tree = line(act("cc_attrs", value=Var(type=Var.LAZY, custom_type="cc_tagged", value="${a}-x")),
                data={"inputs": {"${a}": {"type": "plain", "value": "A"}}, "outputs": []})
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree, root_pipeline_data={"who": "me"})
    wait_for(rt, pid, "FINISHED")
    assert api.get_execution_data_outputs(rt, node).data["echo"] == "A-x|me|1"

    broken = line(act("cc_attrs", value=Var(type=Var.LAZY, custom_type="cc_broken", value="v")))
    node = next(iter(broken["activities"]))
    start_run(rt, broken)
    wait_for(rt, node, "FAILED")
    ex_data = api.get_execution_data_outputs(rt, node).data["ex_data"]
    assert "value" in ex_data and "cc_broken cannot say" in ex_data

    unknown = line(act("cc_attrs", value=Var(type=Var.LAZY, custom_type="cc_nowhere", value="v")))
    res = api.run_pipeline(rt, unknown)
    assert res.result is False and "cc_nowhere" in res.message
    assert api.get_pipeline_states(rt, unknown["id"]).data == {}


@pytest.mark.parametrize("end_type", ["cc_end", "cc_sink"])
def test_executable_end_events_run_and_fail_retryably(rt, end_type):
    from culm.builder import ExecutableEndEvent

    tree = line(act("cc_attrs"), end=ExecutableEndEvent(type=end_type))
    assert tree["end_event"]["type"] == end_type
    wait_for(rt, start_run(rt, tree), "FINISHED")
    bad = line(act("cc_attrs"), end=ExecutableEndEvent(type=end_type), id=f"explode{uuid.uuid4().hex}"[:33])
    end_id = bad["end_event"]["id"]
    pid = start_run(rt, bad)
    wait_for(rt, end_id, "FAILED")
    assert _state(rt, pid) == "RUNNING"
    assert "refuses" in api.get_execution_data_outputs(rt, end_id).data["ex_data"]
    assert api.retry_node(rt, end_id).result
    wait_for(rt, end_id, "FAILED")  # fails again, as its code still refuses: retried, not refused


def test_an_exception_fails_the_node_with_its_traceback(rt):
    tree = line(act("cc_raise"))
    node = next(iter(tree["activities"]))
    start_run(rt, tree)
    wait_for(rt, node, "FAILED")
    out = api.get_execution_data_outputs(rt, node).data
    assert out["_result"] is False and "Traceback" in out["ex_data"] and "cc_raise exploded" in out["ex_data"]


def test_unregistered_component_fails_with_its_code(rt):
    tree = line(act("cc_never_registered"))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_for(rt, node, "FAILED")
    assert "cc_never_registered" in api.get_execution_data_outputs(rt, node).data["ex_data"]
    assert api.revoke_pipeline(rt, pid).result
    wait_for(rt, pid, "REVOKED")


def test_pause_resume_and_forced_fail_of_a_polling_node(rt):
    tree = line(act("cc_callback"), act("cc_attrs"))
    waiting, after = list(tree["activities"])
    pid = start_run(rt, tree)
    wait_until(lambda: api.get_execution_data_outputs(rt, waiting).data.get("version_seen"), 30, 0.05,
               what="the node to wait")
    assert api.pause_pipeline(rt, pid).result
    wait_for(rt, pid, "SUSPENDED")
    assert api.resume_pipeline(rt, pid).result
    wait_for(rt, pid, "RUNNING")
    assert api.forced_fail_activity(rt, waiting, "stop it").result
    wait_for(rt, waiting, "FAILED")
    assert api.get_execution_data_outputs(rt, waiting).data["ex_data"] == "stop it"
    assert api.skip_node(rt, waiting).result
    wait_for(rt, pid, "FINISHED")
    assert api.get_children_states(rt, waiting).data[waiting]["skip"] is True
    assert _state(rt, after) == "FINISHED"


def test_workers_send_signals_django_style_in_their_own_process(harness):
    """Distributed mode: the worker that made a change sends the signals, after the commit."""
    import json

    for name in HARNESS:
        backend = harness(name)
        rt = backend.runtime()
        tree = line(act("cc_attrs"))
        node = next(iter(tree["activities"]))
        pid = start_run(rt, tree)
        wait_for(rt, pid, "FINISHED")

        def seen(log: Path = backend.signal_log, ids: tuple[str, str] = (pid, node)) -> list[dict[str, Any]]:
            lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            got = [x for x in lines if x["node_id"] in ids or x["signal"] == "pipeline_event"]
            done = any(x["node_id"] == ids[0] and x["to_state"] == "FINISHED" for x in got)
            return got if done else []

        got = wait_until(seen, 30, 0.1, what=f"{name}: the worker's signals")
        states = [x for x in got if x["signal"] == "post_set_state"]
        assert {"RUNNING", "FINISHED"} <= {x["to_state"] for x in states if x["node_id"] == node}
        for x in states:
            assert x["named"] == sorted(["node_id", "to_state", "version", "root_id", "parent_id", "loop"])
            assert x["sender_is_class"] and x["pid"] != os.getpid()
        assert any(x["signal"] == "pipeline_event" and x["named"] == ["event"] and x["event_type"] for x in got)
        _command_signals_in_the_callers_process(rt)


def _command_signals_in_the_callers_process(rt: Any) -> None:
    """A command's signals are sent by the process that called it, once it is committed."""
    from culm import signals

    heard: list[tuple[str, Any]] = []

    def listen(sender, **kwargs):
        event = kwargs.get("event")
        heard.append((kwargs["node_id"], kwargs["to_state"]) if event is None else ("event", event.event_type))

    tree = line(act("cc_callback"))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_until(lambda: api.get_execution_data_outputs(rt, node).data.get("version_seen"), 30, 0.05, what="it waits")
    signals.post_set_state.connect(listen)
    signals.pipeline_event.connect(listen)
    try:
        assert api.pause_pipeline(rt, pid).result
        assert (pid, "SUSPENDED") in heard and ("event", "post_pause_pipeline") in heard
        assert _state(rt, pid) == "SUSPENDED"
        assert api.revoke_pipeline(rt, pid).result
        assert (pid, "REVOKED") in heard
    finally:
        signals.post_set_state.disconnect(listen)
        signals.pipeline_event.disconnect(listen)


def test_hooks_get_callback_data_only_when_there_is_one(tmp_path):
    """Embedded (hooks run in this process): every hook called as hook(data, parent_data), with
    callback_data= added for the callback, schedule and finish hooks of a callback node only; no
    pause hook for a node not reached; resume hooks never."""
    cc.HOOK_CALLS.clear()
    with culm.Runtime(f"sqlite:///{tmp_path}/h.db") as rt:
        tree = line(act("cc_callback"), act("cc_callback"))
        a, b = list(tree["activities"])
        pid = start_run(rt, tree)
        wait_until(lambda: api.get_execution_data_outputs(rt, a).data.get("version_seen"), 30, 0.05, what="a waits")
        assert api.pause_node_appoint(rt, b).result  # not reached: no service hook
        assert api.callback(rt, a, api.get_children_states(rt, a).data[a]["version"], {"x": 1}).result
        wait_for(rt, b, "SUSPENDED")
        assert api.resume_node_appoint(rt, b).result
        wait_until(lambda: api.get_execution_data_outputs(rt, b).data.get("version_seen"), 30, 0.05, what="b waits")
        assert api.forced_fail_activity(rt, b, "stop").result
        wait_for(rt, b, "FAILED")
        assert api.skip_node(rt, b).result
        wait_for(rt, pid, "FINISHED")
        rt.wait_idle(10)
    calls = {node: [(hook, kw, data) for n, hook, kw, data in cc.HOOK_CALLS if n == node] for node in (a, b)}
    with_data = ("callback_data",), {"x": 1}
    assert calls[a] == [("node_enter", (), None), ("pre_execute", (), None), ("post_execute", (), None),
                        ("pre_callback", *with_data), ("post_callback", *with_data),
                        ("pre_schedule", *with_data), ("post_schedule", *with_data), ("node_finish", *with_data)]
    assert calls[b] == [("node_enter", (), None), ("pre_execute", (), None), ("post_execute", (), None),
                        ("pre_forced_fail_activity", (), None), ("post_forced_fail_activity", (), None),
                        ("pre_skip_node", (), None), ("post_skip_node", (), None)]


def test_legacy_facade_on_the_default_runtime(tmp_path):
    """``culm.legacy`` uses the default runtime: $CULM_DATABASE_URL (here a file of the test's)."""
    script = f"""
import sys, time
sys.path[:0] = [{str(HERE)!r}]
import contract_components
from test_contract_conformance import line, act
from culm.legacy import PipelineParser, task_service
tree = line(act("cc_fail", ok=False))
node = next(iter(tree["activities"]))
obj = PipelineParser(tree).parse()
assert obj.id == tree["id"]
task_service.run_pipeline(obj)
deadline = time.monotonic() + 30
while task_service.get_state(obj.id)["children"].get(node, {{}}).get("state") != "FAILED":
    assert time.monotonic() < deadline, task_service.get_state(obj.id)
    time.sleep(0.05)
state = task_service.get_state(obj.id)
assert {{"children", "state", "loop", "retry", "skip", "start_time", "finish_time"}} <= set(state), state
assert state["state"] == "RUNNING"
task_service.skip_activity(node)
while task_service.get_state(obj.id)["state"] != "FINISHED":
    assert time.monotonic() < deadline, task_service.get_state(obj.id)
    time.sleep(0.05)
print("legacy ok", task_service.get_state(obj.id)["children"][node]["skip"])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_") or k == "CULMTEST_SESSION"}
    env["CULM_DATABASE_URL"] = f"sqlite:///{tmp_path}/legacy.db"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), str(REPO)])
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "legacy ok True" in out.stdout


CLI_MODULE = '''
import contract_components  # noqa: F401 - registers cc_fail
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree


def build_pipeline():
    start = EmptyStartEvent()
    node = ServiceActivity(component_code="cc_fail", id="cli_node")
    node.component.inputs.ok = Var(type=Var.SPLICE, value="${ok}")
    start.extend(node).extend(EmptyEndEvent())
    return build_tree(start, id="cli_pipe", data={"inputs": {"${ok}": {"type": "plain", "value": False}},
                                                 "outputs": []})
'''


def test_command_line_exit_codes_as_the_harness_sees_them(tmp_path):
    """0 done, 1 pipeline failed (run, status), 2 bad input, 3 not found, 4 database, 5 refused;
    a TREE.json finds its components through $CULM_IMPORTS."""
    import json

    (tmp_path / "flow.py").write_text(CLI_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_") or k == "CULMTEST_SESSION"}
    env.update(CULM_DATABASE_URL=f"sqlite:///{tmp_path}/cli.db", CULM_IMPORTS="contract_components",
               PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)]))

    def culm_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "culm", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    ran = culm_cli("run", "flow.py")
    assert ran.returncode == 1 and "cli_node" in ran.stdout + ran.stderr and "cc_fail: ok is false" in ran.stdout
    status = culm_cli("status", "cli_pipe", "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["failed"] == ["cli_node"]
    assert culm_cli("retry", "cli_node", "--data", '{"ok": true}').returncode == 0
    wait_until(lambda: culm_cli("status", "cli_pipe").returncode == 0, 60, 0.2, what="the retried run to finish")
    shown = culm_cli("show", "cli_pipe", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["tree"]["state"] == "FINISHED"
    assert culm_cli("history", "cli_node").returncode == 0 and culm_cli("logs", "cli_node").returncode == 0
    assert culm_cli("list").returncode == 0
    assert culm_cli("status", "ghost").returncode == 3
    assert culm_cli("retry", "cli_node").returncode == 5  # FINISHED: the engine refuses
    assert culm_cli("status").returncode == 2
    assert culm_cli("status", "cli_pipe", "--db", "postgresql://127.0.0.1:1/x").returncode == 4
    created = culm_cli("token", "create", "--role", "viewer")
    token_id = created.stdout.strip().split("_")[1]
    assert created.returncode == 0 and culm_cli("token", "revoke", token_id).returncode == 0
    assert culm_cli("token", "revoke", token_id).returncode == 5 and culm_cli("token", "revoke", "ghost").returncode == 3
    assert culm_cli("token", "create", "--role", "king").returncode == 2

    import contract_components  # noqa: F401 - the tree names cc_attrs

    tree = line(act("cc_attrs", value="${fragment"))
    (tmp_path / "tree.json").write_text(json.dumps(tree))
    checked = culm_cli("validate", "tree.json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert culm_cli("run", "tree.json").returncode == 0  # components from $CULM_IMPORTS
    tree["flows"][tree["start_event"]["outgoing"]]["target"] = "nowhere"
    (tmp_path / "bad.json").write_text(json.dumps(tree))
    bad = culm_cli("validate", "bad.json")
    assert bad.returncode == 2 and "nowhere" in bad.stdout + bad.stderr


def test_preview_inputs_and_update_context_values(rt):
    from culm.builder import Var

    tree = _builder_tree()
    sub = next(a for a in tree["activities"].values() if a["type"] == "SubProcess")
    inner = next(iter(sub["pipeline"]["activities"]))
    first = tree["flows"][tree["start_event"]["outgoing"]]["target"]
    assert api.preview_node_inputs(rt, tree, first).data == {"value": 1}
    assert api.preview_node_inputs(rt, tree, sub["id"]).data == {"${sub_in}": "t"}
    assert api.preview_node_inputs(rt, tree, inner, [sub["id"]]).data == {"value": "t"}
    assert api.get_pipeline_states(rt, tree["id"]).data == {}  # a preview runs nothing

    tree = line(act("cc_callback"), act("cc_attrs", value=Var(type=Var.SPLICE, value="${k}")),
                data={"inputs": {"${k}": {"type": "plain", "value": "old"}}, "outputs": []})
    waiting, reader = list(tree["activities"])
    pid = start_run(rt, tree)
    wait_until(lambda: api.get_execution_data_outputs(rt, waiting).data.get("version_seen"), 30, 0.05, what="it waits")
    assert api.update_context_values(rt, pid, {"${k}": "new"}).result
    assert api.callback(rt, waiting, api.get_children_states(rt, waiting).data[waiting]["version"], {}).result
    wait_for(rt, pid, "FINISHED")
    assert api.get_execution_data_outputs(rt, reader).data["echo"] == "new"


@pytest.mark.parametrize("name", list(HARNESS))
def test_command_line_on_a_cluster(harness, tmp_path, name):
    """`culm run TREE.json --db URL --broker URL` hands the run to the workers (it defines no
    component itself); status, logs and a control command work on the cluster's database."""
    import json

    backend = harness(name)
    tree = line(act("cc_attrs", value="from the CLI"), act("cc_callback"))
    first, waiting = list(tree["activities"])
    (tmp_path / "tree.json").write_text(json.dumps(tree))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_") or k == "CULMTEST_SESSION"}
    env["PYTHONPATH"] = str(REPO)
    where = ["--db", backend.db_url]

    def culm_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "culm", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)

    ran = subprocess.Popen([sys.executable, "-m", "culm", "run", "tree.json", *where, "--broker", backend.broker_url],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rt = backend.runtime()
        wait_until(lambda: api.get_execution_data_outputs(rt, waiting).data.get("version_seen"), 60, 0.1,
                   what="the run to reach the callback node")
        assert culm_cli("logs", first, *where).stdout.count(f"attrs of {first}") == 1
        version = api.get_children_states(rt, waiting).data[waiting]["version"]
        called = culm_cli("callback", waiting, "--data", '{"ok": 1}', *where, "--broker", backend.broker_url)
        assert called.returncode == 0, called.stderr
        out, err = ran.communicate(timeout=120)
    finally:
        if ran.poll() is None:
            ran.kill()
    assert ran.returncode == 0, out + err
    assert api.get_execution_data_outputs(rt, waiting).data["callback_data"] == {"ok": 1}
    assert api.get_execution_data_outputs(rt, first).data["echo"] == "from the CLI"
    assert version and culm_cli("status", tree["id"], *where).returncode == 0
    assert culm_cli("status", "ghost", *where).returncode == 3
