"""What a bamboo-pipeline user writes, run on culm with only the imports changed, on each runtime the
acceptance harness judges: embedded SQLite, and PostgreSQL + Redis and MariaDB + RabbitMQ with
``culm worker`` processes loading the plugins through ``$CULM_IMPORTS`` only (``contract_idioms``).

Written against ``api-contract.md`` and ``bamboo-features.md`` only: component classes as bamboo
users define them (a falsy ``version``, a version made by subclassing), a dict ``ex_data``, a tree
written by hand as bamboo takes it (flows without ``id``, ``incoming`` as a string, optional keys
left out, ``${}`` conditions, a subprocess freezing a lazy variable with ``pre_render_keys``), the
result shapes of a subprocess and of a graph loop's histories, the hooks of a multi-callback node
(``callback_data`` only when there is one) with the control hooks in the caller's process, bamboo's
interval generators, and a user's ``example_component`` replacing the demo one on the workers.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import os
import sys
import uuid
from typing import Any

import contract_idioms as ci
import pytest
from contract_support import start_run, state_of, wait_for
from support import wait_until

from culm import api

pytestmark = pytest.mark.timeout(300)


def _id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"[:33]


def test_components_defined_as_bamboo_users_define_them(rt):
    """``version = None`` is "legacy" (bamboo sets a falsy version so); a subclass of a component
    with another ``version`` is a second version of the same code; ``execute`` returning None
    succeeds; ``get_one_of_inputs`` takes a default; ``parent_data`` holds the root pipeline data;
    an ``_result`` the component writes is the engine's."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
    from culm.components import library

    assert ci.EchoComponent.version == "legacy" and library.get("ci_echo") is ci.EchoComponent
    assert library.get("ci_echo", "2.0") is ci.EchoV2Component and library.versions("ci_echo") == ["2.0", "legacy"]
    assert ci.EchoComponent.group_name == "Idioms"
    start, first, second = EmptyStartEvent(), ServiceActivity(component_code="ci_echo"), \
        ServiceActivity(component_code="ci_echo", version="2.0")
    first.component.inputs.value = Var(type=Var.PLAIN, value="v1")
    second.component.inputs.value = Var(type=Var.SPLICE, value="${x}-2")
    start.extend(first).extend(second).extend(EmptyEndEvent())
    tree = build_tree(start, data={"inputs": {"${x}": {"type": "plain", "value": "x"}}, "outputs": []})
    assert "version" not in tree["activities"][first.id]["component"]
    pid = start_run(rt, tree, root_pipeline_data={"executor": "admin"})
    wait_for(rt, pid, "FINISHED")
    for node, value in ((first.id, "v1"), (second.id, "x-2")):
        out = api.get_execution_data_outputs(rt, node).data
        version = api.get_children_states(rt, node).data[node]["version"]
        assert out == {"seen": {"value": value}, "parent": {"executor": "admin"}, "executor": "admin",
                       "missing": "default", "_result": True, "class_version": version, "_loop": 1,
                       "_inner_loop": 1}, out
        assert api.get_execution_data_inputs(rt, node).data == {"value": value, "_loop": 1, "_inner_loop": 1}


def test_a_dict_ex_data_is_kept_as_the_component_wrote_it(rt):
    """bamboo keeps ``ex_data`` as the component sets it; a retry with new data fails again with the
    new value, and the history keeps the first run's dict."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    start, node = EmptyStartEvent(), ServiceActivity(component_code="ci_fail_dict")
    start.extend(node).extend(EmptyEndEvent())
    tree = build_tree(start)
    pid = start_run(rt, tree)
    wait_for(rt, node.id, "FAILED")
    assert state_of(rt, pid) == "RUNNING"
    out = api.get_execution_data_outputs(rt, node.id).data
    assert out == {"ex_data": {"code": 4001, "message": "quota exceeded", "retry": 0}, "_result": False,
                   "_loop": 1, "_inner_loop": 1}
    assert api.retry_node(rt, node.id, data={"n": 1}).result
    wait_until(lambda: api.get_children_states(rt, node.id).data[node.id]["retry"] == 1
               and state_of(rt, node.id) == "FAILED", 30, 0.05, what="the retry to fail")
    assert api.get_execution_data_outputs(rt, node.id).data["ex_data"]["retry"] == 1
    (hist,) = api.get_node_histories(rt, node.id).data
    assert hist["outputs"]["ex_data"] == {"code": 4001, "message": "quota exceeded", "retry": 0}
    assert api.skip_node(rt, node.id).result
    wait_for(rt, pid, "FINISHED")


def test_what_execute_returns_counts_by_its_truth(rt):
    """None and True succeed, False fails (the contract); bamboo judges any other value by its
    truth: ``"done"`` succeeds, ``0`` fails, and keeps the value itself as ``_result`` (culm
    stored the bool)."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

    start, nodes = EmptyStartEvent(), [ServiceActivity(component_code="ci_returns") for _ in range(4)]
    tail = start
    for node, give in zip(nodes, [None, True, "done", 0], strict=True):
        node.component.inputs.give = Var(type=Var.PLAIN, value=give)
        tail = tail.extend(node)
    tail.extend(EmptyEndEvent())
    pid = start_run(rt, build_tree(start))
    wait_for(rt, nodes[-1].id, "FAILED")
    assert [state_of(rt, n.id) for n in nodes] == ["FINISHED", "FINISHED", "FINISHED", "FAILED"]
    # bamboo keeps what execute returned as `_result` (None: True)
    assert [api.get_execution_data_outputs(rt, n.id).data["_result"] for n in nodes] == [True, True, "done", 0]
    assert state_of(rt, pid) == "RUNNING"


def _hand_written_tree() -> tuple[dict[str, Any], dict[str, str]]:
    """A tree as a bamboo user writes one by hand (no builder): flows without ``id``, ``incoming``
    as a string, no ``name`` / ``optional`` / ``timeout`` / ``is_default`` / component ``version``,
    ``${}`` conditions, a default flow, an input never rendered, and a subprocess whose lazy
    variable is frozen at its start (``pre_render_keys``) and whose output the root maps."""
    n = {k: _id(k[0]) for k in ("start", "ask", "gw", "yes", "no", "other", "conv", "sub", "end",
                                 "s_start", "s_one", "s_two", "s_end")}
    f = {k: _id("f") for k in ("f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "s1", "s2", "s3")}

    def act(nid: str, incoming: Any, outgoing: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"id": nid, "type": "ServiceActivity", "incoming": incoming, "outgoing": outgoing,
                "component": {"code": "ci_echo", "inputs": inputs}}

    def flow(source: str, target: str) -> dict[str, str]:
        return {"source": source, "target": target}

    sub_tree = {
        "id": n["sub"],
        "start_event": {"id": n["s_start"], "type": "EmptyStartEvent", "incoming": "", "outgoing": f["s1"]},
        "end_event": {"id": n["s_end"], "type": "EmptyEndEvent", "incoming": f["s3"], "outgoing": ""},
        "activities": {
            n["s_one"]: act(n["s_one"], f["s1"], f["s2"], {"value": {"type": "splice", "value": "${p}|${t}"}}),
            n["s_two"]: act(n["s_two"], f["s2"], f["s3"], {"value": {"type": "splice", "value": "${t}"}}),
        },
        "gateways": {},
        "flows": {f["s1"]: flow(n["s_start"], n["s_one"]), f["s2"]: flow(n["s_one"], n["s_two"]),
                  f["s3"]: flow(n["s_two"], n["s_end"])},
        "data": {"inputs": {"${p}": {"type": "plain", "value": "default", "is_param": True},
                            "${t}": {"type": "lazy", "custom_type": "ci_stamp", "value": "${p}"}},
                 "outputs": ["${t}"], "pre_render_keys": ["${t}"]},
    }
    tree = {
        "id": _id("p"),
        "start_event": {"id": n["start"], "type": "EmptyStartEvent", "incoming": "", "outgoing": f["f1"]},
        "end_event": {"id": n["end"], "type": "EmptyEndEvent", "incoming": f["f10"], "outgoing": ""},
        "activities": {
            n["ask"]: act(n["ask"], f["f1"], f["f2"], {"value": {"type": "splice", "value": "${label}",
                                                                 "need_render": False}}),
            n["yes"]: act(n["yes"], [f["f3"]], f["f6"], {"value": {"type": "splice", "value": "${label}"}}),
            n["no"]: act(n["no"], f["f4"], f["f7"], {}),
            n["other"]: act(n["other"], f["f5"], f["f8"], {}),
            n["sub"]: {"id": n["sub"], "type": "SubProcess", "incoming": f["f9"], "outgoing": f["f10"],
                       "params": {"${p}": {"type": "splice", "value": "${label}-sub"}}, "pipeline": sub_tree},
        },
        "gateways": {
            n["gw"]: {"id": n["gw"], "type": "ExclusiveGateway", "incoming": f["f2"],
                      "outgoing": [f["f3"], f["f4"], f["f5"]],
                      "conditions": {f["f3"]: {"evaluate": "${count} > 1 and ${label} == 'go'", "name": "go"},
                                     f["f4"]: {"evaluate": "${count} in (0, 1)"},
                                     f["f5"]: {"evaluate": "${label} == stop"}},
                      "default_condition": {"flow_id": f["f5"]}},
            n["conv"]: {"id": n["conv"], "type": "ConvergeGateway", "incoming": [f["f6"], f["f7"], f["f8"]],
                        "outgoing": f["f9"]},
        },
        "flows": {f["f1"]: flow(n["start"], n["ask"]), f["f2"]: flow(n["ask"], n["gw"]),
                  f["f3"]: flow(n["gw"], n["yes"]), f["f4"]: flow(n["gw"], n["no"]),
                  f["f5"]: flow(n["gw"], n["other"]), f["f6"]: flow(n["yes"], n["conv"]),
                  f["f7"]: flow(n["no"], n["conv"]), f["f8"]: flow(n["other"], n["conv"]),
                  f["f9"]: flow(n["conv"], n["sub"]), f["f10"]: flow(n["sub"], n["end"])},
        "data": {"inputs": {"${count}": {"type": "plain", "value": 2},
                            "${label}": {"type": "plain", "value": "go"},
                            "${frozen}": {"type": "plain", "value": None, "source_act": n["sub"],
                                          "source_key": "${t}"}},
                 "outputs": ["${frozen}"]},
    }
    return tree, n


def test_a_tree_written_by_hand_as_bamboo_takes_it(rt):
    from culm.validator import validate_and_process_pipeline

    tree, n = _hand_written_tree()
    checked = validate_and_process_pipeline(copy.deepcopy(tree))
    assert checked["gateways"][n["gw"]]["converge_gateway_id"] == n["conv"]
    pid = start_run(rt, tree)
    wait_for(rt, pid, "FINISHED")
    states = api.get_pipeline_states(rt, pid).data[pid]["children"]
    assert states[n["yes"]]["state"] == "FINISHED" and n["no"] not in states and n["other"] not in states
    assert api.get_execution_data_outputs(rt, n["ask"]).data["seen"] == {"value": "${label}"}  # never rendered
    assert api.get_execution_data_outputs(rt, n["yes"]).data["seen"] == {"value": "go"}
    one = api.get_execution_data_outputs(rt, n["s_one"]).data["seen"]["value"]
    two = api.get_execution_data_outputs(rt, n["s_two"]).data["seen"]["value"]
    assert one == f"go-sub|{two}" and two.startswith("go-sub-")  # frozen at the start: both read one value
    sub = api.get_execution_data(rt, n["sub"]).data
    assert sub == {"inputs": {"${p}": "go-sub"}, "outputs": {"${t}": two, "_loop": 1, "_inner_loop": 1}}
    assert api.get_execution_data_outputs(rt, pid).data == {"${frozen}": two}
    raw = api.get_data(rt, n["sub"]).data
    assert raw == {"inputs": {"${p}": {"need_render": True, "value": "${label}-sub"}},
                   "outputs": {"${t}": "${frozen}"}}
    assert api.get_data(rt, n["ask"]).data["inputs"]["value"] == {"need_render": False, "value": "${label}"}
    nested = api.get_pipeline_states(rt, pid, flat_children=False).data[pid]["children"]
    assert set(nested[n["sub"]]["children"]) == {n["s_start"], n["s_one"], n["s_two"], n["s_end"]}
    assert n["s_one"] in states  # flat: every depth under the root


@pytest.mark.parametrize("case", ["bare-word", "default", "two-hold"])
def test_hand_written_conditions_default_and_several_hits(rt, case):
    """``${label} == stop`` holds for the label ``stop`` (boolrule reads a bare word as a string);
    with no condition holding the default flow is taken; when two hold, an exclusive gateway fails
    (bamboo: "multiple conditions meet") and ``skip_exclusive_gateway`` goes on along a chosen flow."""
    tree, n = _hand_written_tree()
    gateway = tree["gateways"][n["gw"]]
    go, low, _stop = gateway["outgoing"]
    tree["data"]["inputs"]["${count}"]["value"] = 1 if case == "two-hold" else 5
    tree["data"]["inputs"]["${label}"]["value"] = {"bare-word": "stop", "default": "nope", "two-hold": "go"}[case]
    if case == "two-hold":
        gateway["conditions"][go]["evaluate"] = "${count} >= 1 and ${label} == 'go'"
    pid = start_run(rt, tree)
    if case != "two-hold":
        wait_for(rt, pid, "FINISHED")
        states = api.get_pipeline_states(rt, pid).data[pid]["children"]
        assert states[n["other"]]["state"] == "FINISHED" and n["yes"] not in states and n["no"] not in states
        return
    wait_for(rt, n["gw"], "FAILED")
    assert "multiple" in api.get_execution_data_outputs(rt, n["gw"]).data["ex_data"]
    assert api.skip_exclusive_gateway(rt, n["gw"], low).result
    wait_for(rt, pid, "FINISHED")
    assert state_of(rt, n["no"]) == "FINISHED" and state_of(rt, n["yes"]) is None
    assert api.get_children_states(rt, n["gw"]).data[n["gw"]]["skip"] is True


def test_graph_loop_histories_have_bamboos_fields(rt):
    """A node entered three times through a loop-back flow keeps two histories, oldest first, with
    the contract's keys and types; ``loop=`` filters them."""
    from culm import builder as b

    start, node, gw, end = b.EmptyStartEvent(), b.ServiceActivity(component_code="ci_echo"), \
        b.ExclusiveGateway(conditions={0: "${node_loop} < 3", 1: "${node_loop} >= 3"}), b.EmptyEndEvent()
    node.component.inputs.value = b.Var(type=b.Var.SPLICE, value="${node_loop}")
    start.extend(node).extend(gw).connect(node, end)
    tree = b.build_tree(start, data=b.Data(inputs={"${node_loop}": b.NodeOutput(source_act=node.id,
                                                                                 source_key="_loop")}))
    pid = start_run(rt, tree, cycle_tolerate=True)
    wait_for(rt, pid, "FINISHED")
    entry = api.get_children_states(rt, node.id).data[node.id]
    assert entry["loop"] == 3
    hist = api.get_node_histories(rt, node.id).data
    assert [h["loop"] for h in hist] == [1, 2]
    for h in hist:
        assert list(h) == ["id", "node_id", "started_time", "archived_time", "loop", "retry", "skip", "version",
                           "inputs", "outputs"]
        assert isinstance(h["id"], int) and h["node_id"] == node.id and (h["retry"], h["skip"]) == (0, False)
        assert isinstance(h["started_time"], datetime.datetime) and h["started_time"].tzinfo is not None
        assert h["archived_time"] >= h["started_time"] and isinstance(h["version"], str)
        assert h["outputs"]["_loop"] == h["loop"] and h["outputs"]["_result"] is True
    # bamboo pre-seeds a node's own mapped _loop, so a node reads the loop it is in
    assert [h["inputs"]["value"] for h in hist] == [1, 2]
    assert api.get_execution_data_inputs(rt, node.id).data["value"] == 3
    assert hist[0]["version"] != hist[1]["version"] != entry["version"]
    assert api.get_node_histories(rt, node.id, loop=2).data == [hist[1]]
    short = api.get_node_short_histories(rt, node.id).data
    assert [list(h) for h in short] == [["id", "node_id", "started_time", "archived_time", "loop", "skip",
                                         "version"]] * 2
    assert len(api.get_node_histories(rt, gw.id).data) == 2


def _hooks_of(node_id: str, control: bool) -> list[tuple[str, bool, object]]:
    names = {"pre_callback", "post_callback", "pre_retry_node", "post_retry_node", "pre_skip_node",
             "post_skip_node", "pre_forced_fail_activity", "post_forced_fail_activity", "pre_pause_node",
             "post_pause_node", "pre_resume_node", "post_resume_node"}
    return [(h, given, value) for n, h, given, value in ci.HOOK_CALLS if n == node_id and (h in names) == control]


def test_multi_callback_hooks_get_callback_data_only_when_there_is_one(rt):
    """A multi-callback node's hooks, as its outputs keep them (the execute and schedule hooks run
    where the node runs: a worker), and the control hooks in this process, the caller's."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    ci.HOOK_CALLS.clear()
    start, node, failing = EmptyStartEvent(), ServiceActivity(component_code="ci_multi_callback"), \
        ServiceActivity(component_code="ci_multi_callback")
    start.extend(node).extend(failing).extend(EmptyEndEvent())
    tree = build_tree(start)
    pid = start_run(rt, tree)

    def waiting(nid: str, retry: int = 0) -> str:
        """The version of ``nid`` once its ``retry``-th run waits for callbacks."""
        def check() -> str | None:
            entry = api.get_children_states(rt, nid).data.get(nid)
            ready = entry and (entry["state"], entry["retry"]) == ("RUNNING", retry)
            return entry["version"] if ready and api.get_execution_data_outputs(rt, nid).data.get(
                "received") == [] else None

        return wait_until(check, 30, 0.05, what=f"{nid} to wait for callbacks")

    version = waiting(node.id)
    assert api.callback(rt, node.id, version, {"n": 1}).result
    assert api.callback(rt, node.id, version, {"n": 2, "last": True}).result
    wait_for(rt, node.id, "FINISHED")
    out = api.get_execution_data_outputs(rt, node.id).data
    assert out["received"] == [{"n": 1}, {"n": 2, "last": True}]
    assert out["hooks"] == [["node_enter", False], ["pre_execute", False], ["post_execute", False],
                            ["pre_schedule", True], ["post_schedule", True],
                            ["pre_schedule", True], ["post_schedule", True], ["node_finish", True]]
    assert _hooks_of(node.id, control=True) == [("pre_callback", True, {"n": 1}), ("post_callback", True, {"n": 1}),
                                                ("pre_callback", True, {"n": 2, "last": True}),
                                                ("post_callback", True, {"n": 2, "last": True})]

    version = waiting(failing.id)
    assert api.callback(rt, failing.id, version, {"fail": True}).result
    wait_for(rt, failing.id, "FAILED")
    out = api.get_execution_data_outputs(rt, failing.id).data
    assert out["ex_data"] == "told to fail" and out["_result"] is False
    assert out["hooks"][-2:] == [["pre_schedule", True], ["node_schedule_fail", True]]
    assert api.retry_node(rt, failing.id).result
    waiting(failing.id, retry=1)
    assert api.forced_fail_activity(rt, failing.id, "operator says no").result
    wait_for(rt, failing.id, "FAILED")
    assert api.get_execution_data_outputs(rt, failing.id).data["ex_data"] == "operator says no"
    assert api.skip_node(rt, failing.id).result
    wait_for(rt, pid, "FINISHED")
    assert _hooks_of(failing.id, control=True) == [
        ("pre_callback", True, {"fail": True}), ("post_callback", True, {"fail": True}),
        ("pre_retry_node", False, None), ("post_retry_node", False, None),
        ("pre_forced_fail_activity", False, None), ("post_forced_fail_activity", False, None),
        ("pre_skip_node", False, None), ("post_skip_node", False, None)]


@pytest.mark.parametrize(("code", "least_seconds"), [("ci_square_poll", 4.5), ("ci_null_poll", 0)])
def test_bamboos_interval_generators(rt, code, least_seconds):
    """The first poll comes at once, later ones after ``interval.next()`` seconds: 1 then 4 with
    ``SquareIntervalGenerator``, none with ``NullIntervalGenerator``; a poll gets no callback data."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    start, node = EmptyStartEvent(), ServiceActivity(component_code=code)
    start.extend(node).extend(EmptyEndEvent())
    tree = build_tree(start)
    pid = start_run(rt, tree)
    wait_for(rt, pid, "FINISHED", timeout=60)
    out = api.get_execution_data_outputs(rt, node.id).data
    assert (out["polls"], out["saw_callback_data"], out["_result"]) == (3, None, True)
    entry = api.get_children_states(rt, node.id).data[node.id]
    assert (entry["archived_time"] - entry["started_time"]).total_seconds() >= least_seconds


def test_a_users_example_component_replaces_the_demo(rt):
    """bamboo's docs define their own ``example_component`` after the quick start; the workers load
    it through ``$CULM_IMPORTS`` after culm's demo, and run it."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
    from culm.components import library

    demo = library.get("example_component")
    try:
        if "contract_idioms_example" in sys.modules:
            importlib.reload(sys.modules["contract_idioms_example"])
        else:
            importlib.import_module("contract_idioms_example")
        assert library.get("example_component").__module__ == "contract_idioms_example"
        start, node = EmptyStartEvent(), ServiceActivity(component_code="example_component")
        start.extend(node).extend(EmptyEndEvent())
        tree = build_tree(start)
        pid = start_run(rt, tree)
        wait_for(rt, pid, "FINISHED")
        assert api.get_execution_data_outputs(rt, node.id).data["who"] == "the user's example_component"
    finally:  # every other test of this process runs the demo
        library.unregister("example_component")
        library.register(demo)


WORKER_EVENTS = {  # spec 8.2: the events of executing nodes, with their payloads' keys
    "node_enter": {"root_pipeline_id", "node_id"}, "pre_execute": {"root_pipeline_id", "node_id"},
    "post_execute": {"root_pipeline_id", "node_id"}, "node_finish": {"root_pipeline_id", "node_id"},
    "node_execute_fail": {"root_pipeline_id", "node_id"},
    "node_execute_exception": {"root_pipeline_id", "node_id", "ex_data"},
    "pre_schedule": {"root_pipeline_id", "node_id"}, "post_schedule": {"root_pipeline_id", "node_id"},
    "node_schedule_fail": {"root_pipeline_id", "node_id"}, "pipeline_finish": {"pipeline_id"},
}


@pytest.mark.parametrize("name", ["postgres-redis", "mariadb-rabbitmq"])
def test_workers_send_every_execution_event_with_bamboos_payload(harness, name):
    """A receiver a worker connects (in a module of ``$CULM_IMPORTS``) hears each event of the nodes
    that worker runs, with spec 8.2's payload, Django-style; the caller's process hears the
    commands' events."""
    import json

    from culm import signals
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

    backend = harness(name)
    rt = backend.runtime()
    heard: list[tuple[str, dict[str, Any]]] = []

    def receiver(sender, **kwargs):
        heard.append((kwargs["event"].event_type, dict(kwargs["event"].data)))

    start, raising, failing, waiting = EmptyStartEvent(), ServiceActivity(component_code="ct_raise"), \
        ServiceActivity(component_code="ci_returns"), ServiceActivity(component_code="ci_multi_callback")
    failing.component.inputs.give = Var(type=Var.PLAIN, value=0)
    start.extend(raising).extend(failing).extend(waiting).extend(EmptyEndEvent())
    tree = build_tree(start)
    pid = tree["id"]
    signals.pipeline_event.connect(receiver)
    try:
        start_run(rt, tree)
        wait_for(rt, raising.id, "FAILED")
        assert api.skip_node(rt, raising.id).result
        wait_for(rt, failing.id, "FAILED")
        assert api.retry_node(rt, failing.id, data={"give": 1}).result
        wait_until(lambda: api.get_execution_data_outputs(rt, waiting.id).data.get("received") == []
                   and state_of(rt, waiting.id) == "RUNNING", 30, 0.05, what="the node to wait for callbacks")
        version = api.get_children_states(rt, waiting.id).data[waiting.id]["version"]
        assert api.callback(rt, waiting.id, version, {"n": 1}).result
        assert api.callback(rt, waiting.id, version, {"fail": True}).result
        wait_for(rt, waiting.id, "FAILED")
        assert api.skip_node(rt, waiting.id).result
        wait_for(rt, pid, "FINISHED")
    finally:
        signals.pipeline_event.disconnect(receiver)
    ids = {pid, raising.id, failing.id, waiting.id}

    def worker_events() -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in backend.signal_log.read_text().splitlines()]
        got = [x for x in lines if x["signal"] == "pipeline_event" and (x["data"] or {}).get("node_id", (
            x["data"] or {}).get("pipeline_id")) in ids]
        return got if any(x["event_type"] == "pipeline_finish" for x in got) else []

    got = wait_until(worker_events, 30, 0.1, what="the workers' events")
    assert all(x["pid"] != os.getpid() and x["sender_is_class"] and x["named"] == ["event"]
               for x in got)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for x in got:
        by_type.setdefault(x["event_type"], []).append(x["data"])
    assert set(WORKER_EVENTS) <= set(by_type), sorted(set(WORKER_EVENTS) - set(by_type))
    for event_type, keys in WORKER_EVENTS.items():
        assert all(set(data) == keys for data in by_type[event_type]), (event_type, by_type[event_type])
    assert by_type["pipeline_finish"] == [{"pipeline_id": pid}]
    assert {"root_pipeline_id": pid, "node_id": failing.id} in by_type["node_execute_fail"]
    assert "ct_raise exploded" in by_type["node_execute_exception"][0]["ex_data"]
    assert {"root_pipeline_id": pid, "node_id": waiting.id} in by_type["node_schedule_fail"]
    assert not {"pre_retry_node", "pre_callback", "pre_skip_node"} & set(by_type)  # the caller's, below
    mine = {event_type for event_type, _ in heard}
    assert {"pre_prepare_run_pipeline", "post_prepare_run_pipeline", "pre_skip_node", "post_skip_node",
            "pre_retry_node", "post_retry_node", "pre_callback", "post_callback"} <= mine
    assert ("post_retry_node", {"node_id": failing.id, "data": {"give": 1}}) in heard
    assert ("post_callback", {"node_id": waiting.id, "version": version, "data": {"fail": True}}) in heard
    assert not set(WORKER_EVENTS) & mine  # executed on the workers, not here


def test_bamboos_engine_settings_on_an_embedded_runtime(tmp_path):
    """bamboo's engine settings as ``culm.Settings`` (embedded: a worker process has its defaults):
    ``PIPELINE_EXCLUSIVE_GATEWAY_STRATEGY`` FIRST takes the first of several true conditions,
    ``PIPELINE_EXCLUSIVE_GATEWAY_EXPR_FUNC`` replaces boolrule, and ``ENABLE_RENDER_OBJ_BY_MAKO_STRING``
    makes a sole ``${d['k'][1]}`` give the object (it was ignored: the text came out)."""
    import culm
    from culm.builder import (
        ConvergeGateway,
        Data,
        EmptyEndEvent,
        EmptyStartEvent,
        ExclusiveGateway,
        Var,
        build_tree,
    )
    from culm.builder import ServiceActivity as Act

    seen: list[tuple[str, dict[str, Any], Any]] = []

    def expr_func(expr, context, extra_info=None):
        seen.append((expr, dict(context), extra_info))
        return expr.startswith("yes")

    def run(settings: Any, conditions: dict[int, str]) -> tuple[list[str], dict[str, Any]]:
        start, gw, a, b = EmptyStartEvent(), ExclusiveGateway(conditions=conditions, extra_info={"who": "me"}), \
            Act(component_code="ci_echo"), Act(component_code="ci_echo")
        a.component.inputs.value = Var(type=Var.SPLICE, value="${d['k'][1]}")
        start.extend(gw).connect(a, b).to(gw).converge(ConvergeGateway()).extend(EmptyEndEvent())
        tree = build_tree(start, data=Data(inputs={"${d}": Var(type=Var.PLAIN, value={"k": [1, {"z": 2}]})}))
        with culm.Runtime(f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db", settings=settings) as runtime:
            pid = start_run(runtime, tree)
            wait_for(runtime, pid, "FINISHED")
            taken = ["a" if state_of(runtime, a.id) else "", "b" if state_of(runtime, b.id) else ""]
            return taken, api.get_execution_data_inputs(runtime, a.id).data

    assert run(culm.Settings(gateway_strategy=2), {0: "1 == 1", 1: "2 == 2"})[0] == ["a", ""]
    taken, inputs = run(culm.Settings(expr_func=expr_func, render_nested_objects=True),
                        {0: "yes ${d['k'][0]}", 1: "no"})
    assert taken == ["a", ""] and inputs["value"] == {"z": 2}
    assert ("yes 1", {"d": {"k": [1, {"z": 2}]}}, {"who": "me"}) in seen
    assert run(culm.Settings(), {0: "1 == 1", 1: "1 == 0"})[1]["value"] == "{'z': 2}"  # bamboo's default: text


def test_a_gateways_own_strategy_overrides_the_engines(rt):
    """Spec 4.6: an exclusive gateway's ``extra_info={"strategy": "FIRST"}`` takes the first of
    several true conditions whatever the engine's setting (bamboo reads it but never applies it, a
    defect flagged there); "ONLY" and no strategy keep the default: two true conditions fail the
    gateway. The workers read it from the tree, with their default settings."""
    from culm.builder import ConvergeGateway, EmptyEndEvent, EmptyStartEvent, ExclusiveGateway, build_tree
    from culm.builder import ServiceActivity as Act

    def run(extra_info: dict[str, Any] | None) -> tuple[str | None, list[str], str | None]:
        start, a, b = EmptyStartEvent(), Act(component_code="ci_echo"), Act(component_code="ci_echo")
        gw = ExclusiveGateway(conditions={0: "1 == 1", 1: "2 == 2"}, extra_info=extra_info)
        start.extend(gw).connect(a, b).to(gw).converge(ConvergeGateway()).extend(EmptyEndEvent())
        pid = start_run(rt, build_tree(start))
        if extra_info and extra_info.get("strategy") == "FIRST":
            wait_for(rt, pid, "FINISHED")
        else:
            wait_for(rt, gw.id, "FAILED")
        taken = [name for name, node in (("a", a), ("b", b)) if state_of(rt, node.id)]
        return state_of(rt, gw.id), taken, api.get_execution_data_outputs(rt, gw.id).data.get("ex_data")

    assert run({"strategy": "FIRST", "who": "me"}) == ("FINISHED", ["a"], None)
    for extra_info in ({"strategy": "ONLY"}, {"strategy": 2}, None):  # 2: not one of the names
        state, taken, ex_data = run(extra_info)
        assert (state, taken) == ("FAILED", []) and ex_data.startswith("multiple conditions meet"), extra_info


@pytest.mark.parametrize("how", ["loop_retry", "loop_skip"])
def test_loop_retry_and_loop_skip_of_a_node_loop(rt, how):
    """Spec 1.2: ``retry_node(loop_retry=True)`` runs the failed iteration again (LOOP_READY, the
    counters kept, ``retry`` unchanged, its entry replaced in the collected list);
    ``skip_node(loop_skip=True)`` skips that iteration only and the loop goes on. A node loop whose
    ``loop_config`` does not allow them, or a node without one, is refused."""
    from culm.builder import Data, EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

    config = {"enable": True, "loop_times": 3, "retryable": True, "skippable": True, "outputs_key": "${steps}"}
    start, node = EmptyStartEvent(), ServiceActivity(component_code="ci_loop_step", loop_config=config)
    node.component.inputs.fail_at = Var(type=Var.PLAIN, value=2)
    start.extend(node).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(outputs=["${steps}"]))
    pid = start_run(rt, tree)
    wait_for(rt, node.id, "FAILED")
    failed = api.get_children_states(rt, node.id).data[node.id]
    assert (failed["loop"], failed["retry"]) == (2, 0)
    assert not api.retry_node(rt, node.id, loop_retry=True, data={"fail_at": "x", "_loop": 1}).result
    if how == "loop_retry":
        assert api.retry_node(rt, node.id, data={"fail_at": 0}, loop_retry=True).result
    else:
        assert api.skip_node(rt, node.id, loop_skip=True).result
    wait_for(rt, pid, "FINISHED")
    entry = api.get_children_states(rt, node.id).data[node.id]
    steps = api.get_execution_data_outputs(rt, pid).data["${steps}"]
    assert (entry["loop"], entry["retry"]) == (3, 0)
    if how == "loop_retry":
        assert [(s["step"], s["result"]) for s in steps] == [(1, True), (2, True), (3, True)]
    else:
        assert [(s["step"], s["result"]) for s in steps] == [(1, True), (2, False), (3, True)]
        # the failed run (kept by the skip), then the skipped one (kept when the next iteration enters)
        assert [h["skip"] for h in api.get_node_histories(rt, node.id).data if h["loop"] == 2] == [False, True]

    plain = ServiceActivity(component_code="ct_fail")
    start = EmptyStartEvent()
    start.extend(plain).extend(EmptyEndEvent())
    start_run(rt, build_tree(start))
    wait_for(rt, plain.id, "FAILED")
    for res in (api.retry_node(rt, plain.id, loop_retry=True), api.skip_node(rt, plain.id, loop_skip=True)):
        assert not res.result and plain.id in res.message and "loop_config" in res.message


def test_children_states_of_a_nested_subprocess_give_the_root_as_its_parent(rt):
    """bamboo's ``get_children_states`` puts the asked node's *root* id in its entry's ``parent_id``
    (``"parent_id": parent_state.root_id``), at any depth; its children keep their own parent (the
    asked node). culm gave a subprocess inside another one the outer subprocess as its parent."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, SubProcess, build_tree

    inner2 = EmptyStartEvent()
    act = ServiceActivity(component_code="ci_echo")
    inner2.extend(act).extend(EmptyEndEvent())
    sub2 = SubProcess(start=inner2)
    inner1 = EmptyStartEvent()
    inner1.extend(sub2).extend(EmptyEndEvent())
    sub1 = SubProcess(start=inner1)
    start = EmptyStartEvent()
    start.extend(sub1).extend(EmptyEndEvent())
    pid = start_run(rt, build_tree(start))
    wait_for(rt, pid, "FINISHED")
    for node_id in (pid, sub1.id, sub2.id):
        entry = api.get_children_states(rt, node_id).data[node_id]
        assert (entry["parent_id"], entry["root_id:"]) == (pid, pid), node_id
        assert entry["children"] and {c["parent_id"] for c in entry["children"].values()} == {node_id}
    assert act.id in api.get_children_states(rt, sub2.id).data[sub2.id]["children"]
    nested = api.get_pipeline_states(rt, pid, flat_children=False).data[pid]
    assert nested["children"][sub1.id]["children"][sub2.id]["parent_id"] == sub1.id  # the state's own parent
