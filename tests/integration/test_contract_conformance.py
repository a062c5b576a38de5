"""The public contract (``api-contract.md``) checked line by line, as the acceptance harness does:
the engine's behaviours (``test_contract_surface.py`` has the names, arguments and registries).

Written against the contract only: result shapes, unknown ids and refusals, runtime attributes and
node logs, lazy variables, executable end events, hooks, signals sent by workers and by callers,
the legacy facade and the command line. They run on embedded SQLite and on PostgreSQL + Redis and
MariaDB + RabbitMQ with ``culm worker`` processes started the way the harness starts them:
``culm worker --db URL --broker URL`` and nothing else (default queue names, concurrency and
leases), loading the test plugins through ``$CULM_IMPORTS`` only (``contract_components.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import contract_components as cc
import pytest
from contract_support import HARNESS, STATE_KEYS, act, builder_tree, line, start_run, state_of, wait_for, walk
from support import wait_until

import culm
from culm import api

pytestmark = pytest.mark.timeout(300)
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

def test_state_entries_runtime_attributes_and_logs(rt):
    """Shapes of get_pipeline_states (flat and nested), only reached nodes, the runtime attributes
    of a service at root and in a subprocess, data access, get_node_logs."""
    tree = builder_tree()
    pid = start_run(rt, tree, root_pipeline_data={"who": "me"})
    wait_for(rt, pid, "FINISHED")
    flat = api.get_pipeline_states(rt, pid)
    assert flat.result and set(flat.data) == {pid}
    root = flat.data[pid]
    for entry in walk(root):
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
    tree = line(act("ct_attrs"))
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
    tree = line(act("ct_fail", ok=False))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_for(rt, node, "FAILED")
    assert state_of(rt, pid) == "RUNNING"  # a failed node does not fail its pipeline
    failed = api.get_execution_data_outputs(rt, node).data
    assert failed["_result"] is False and failed["ex_data"] == "ct_fail: ok is false"
    assert api.retry_node(rt, node, data={"ok": False}).result
    wait_until(lambda: api.get_children_states(rt, node).data[node]["retry"] == 1 and state_of(rt, node) == "FAILED",
               30, 0.05, what="the first retry to fail")
    assert api.retry_node(rt, node, data={"ok": True}).result
    wait_for(rt, pid, "FINISHED")
    hist = api.get_node_histories(rt, node)
    assert hist.result and len(hist.data) == 2
    for i, h in enumerate(hist.data):
        assert list(h) == ["id", "node_id", "started_time", "archived_time", "loop", "retry", "skip", "version",
                           "inputs", "outputs"]  # the contract's order
        assert h["node_id"] == node and h["retry"] == i and h["started_time"].tzinfo is not None
    assert hist.data[0]["archived_time"] <= hist.data[1]["archived_time"]
    assert [h["inputs"]["ok"] for h in hist.data] == [False, False]
    assert api.get_execution_data_inputs(rt, node).data["ok"] is True
    short = api.get_node_short_histories(rt, node).data
    assert [list(h) for h in short] == [["id", "node_id", "started_time", "archived_time", "loop", "skip",
                                         "version"]] * 2
    assert [h["id"] for h in short] == [h["id"] for h in hist.data]
    assert api.get_node_histories(rt, node, loop=1).data == hist.data
    assert api.get_node_histories(rt, node, loop=2).data == []


def test_callback_takes_the_current_version_and_passes_the_payload(rt):
    tree = line(act("ct_callback"))
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

    tree = line(act("ct_attrs", value=Var(type=Var.LAZY, custom_type="ct_tagged", value="${a}-x")),
                data={"inputs": {"${a}": {"type": "plain", "value": "A"}}, "outputs": []})
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree, root_pipeline_data={"who": "me"})
    wait_for(rt, pid, "FINISHED")
    assert api.get_execution_data_outputs(rt, node).data["echo"] == "A-x|me|1"

    broken = line(act("ct_attrs", value=Var(type=Var.LAZY, custom_type="ct_broken", value="v")))
    node = next(iter(broken["activities"]))
    start_run(rt, broken)
    wait_for(rt, node, "FAILED")
    ex_data = api.get_execution_data_outputs(rt, node).data["ex_data"]
    assert "value" in ex_data and "ct_broken cannot say" in ex_data

    unknown = line(act("ct_attrs", value=Var(type=Var.LAZY, custom_type="ct_nowhere", value="v")))
    res = api.run_pipeline(rt, unknown)
    assert res.result is False and "ct_nowhere" in res.message
    assert api.get_pipeline_states(rt, unknown["id"]).data == {}


@pytest.mark.parametrize("end_type", ["ct_end", "ct_sink"])
def test_executable_end_events_run_and_fail_retryably(rt, end_type):
    from culm.builder import ExecutableEndEvent

    tree = line(act("ct_attrs"), end=ExecutableEndEvent(type=end_type))
    assert tree["end_event"]["type"] == end_type
    wait_for(rt, start_run(rt, tree), "FINISHED")
    bad = line(act("ct_attrs"), end=ExecutableEndEvent(type=end_type), id=f"explode{uuid.uuid4().hex}"[:33])
    end_id = bad["end_event"]["id"]
    pid = start_run(rt, bad)
    wait_for(rt, end_id, "FAILED")
    assert state_of(rt, pid) == "RUNNING"
    assert "refuses" in api.get_execution_data_outputs(rt, end_id).data["ex_data"]
    assert api.retry_node(rt, end_id).result
    wait_for(rt, end_id, "FAILED")  # fails again, as its code still refuses: retried, not refused


def test_an_exception_fails_the_node_with_its_traceback(rt):
    tree = line(act("ct_raise"))
    node = next(iter(tree["activities"]))
    start_run(rt, tree)
    wait_for(rt, node, "FAILED")
    out = api.get_execution_data_outputs(rt, node).data
    assert out["_result"] is False and "Traceback" in out["ex_data"] and "ct_raise exploded" in out["ex_data"]


def test_unregistered_component_fails_with_its_code(rt):
    tree = line(act("ct_never_registered"))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_for(rt, node, "FAILED")
    assert "ct_never_registered" in api.get_execution_data_outputs(rt, node).data["ex_data"]
    assert api.revoke_pipeline(rt, pid).result
    wait_for(rt, pid, "REVOKED")


def test_pause_resume_and_forced_fail_of_a_polling_node(rt):
    tree = line(act("ct_callback"), act("ct_attrs"))
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
    assert state_of(rt, after) == "FINISHED"


def test_workers_send_signals_django_style_in_their_own_process(harness):
    """Distributed mode: the worker that made a change sends the signals, after the commit."""
    import json

    for name in HARNESS:
        backend = harness(name)
        rt = backend.runtime()
        tree = line(act("ct_attrs"))
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

    tree = line(act("ct_callback"))
    node = next(iter(tree["activities"]))
    pid = start_run(rt, tree)
    wait_until(lambda: api.get_execution_data_outputs(rt, node).data.get("version_seen"), 30, 0.05, what="it waits")
    signals.post_set_state.connect(listen)
    signals.pipeline_event.connect(listen)
    try:
        assert api.pause_pipeline(rt, pid).result
        assert (pid, "SUSPENDED") in heard and ("event", "post_pause_pipeline") in heard
        assert state_of(rt, pid) == "SUSPENDED"
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
        tree = line(act("ct_callback"), act("ct_callback"))
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
from contract_support import line, act
from culm.legacy import PipelineParser, task_service
tree = line(act("ct_fail", ok=False))
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
import contract_components  # noqa: F401 - registers ct_fail
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree


def build_pipeline():
    start = EmptyStartEvent()
    node = ServiceActivity(component_code="ct_fail", id="cli_node")
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

    # No database file where the default points (./culm.db): nothing there has that id.
    (tmp_path / "empty").mkdir()
    fresh = {k: v for k, v in env.items() if k != "CULM_DATABASE_URL"}
    ghost = subprocess.run([sys.executable, "-m", "culm", "status", "ghost"], cwd=tmp_path / "empty", env=fresh,
                           capture_output=True, text=True, timeout=120)
    assert ghost.returncode == 3 and "no database at culm.db" in ghost.stderr, ghost.stderr
    assert not list((tmp_path / "empty").iterdir())
    ran = culm_cli("run", "flow.py")
    assert ran.returncode == 1 and "cli_node" in ran.stdout + ran.stderr and "ct_fail: ok is false" in ran.stdout
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

    import contract_components  # noqa: F401 - the tree names ct_attrs

    tree = line(act("ct_attrs", value="${fragment"))
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

    tree = builder_tree()
    sub = next(a for a in tree["activities"].values() if a["type"] == "SubProcess")
    inner = next(iter(sub["pipeline"]["activities"]))
    first = tree["flows"][tree["start_event"]["outgoing"]]["target"]
    assert api.preview_node_inputs(rt, tree, first).data == {"value": 1}
    assert api.preview_node_inputs(rt, tree, sub["id"]).data == {"${sub_in}": "t"}
    assert api.preview_node_inputs(rt, tree, inner, [sub["id"]]).data == {"value": "t"}
    assert api.get_pipeline_states(rt, tree["id"]).data == {}  # a preview runs nothing

    tree = line(act("ct_callback"), act("ct_attrs", value=Var(type=Var.SPLICE, value="${k}")),
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
    tree = line(act("ct_attrs", value="from the CLI"), act("ct_callback"))
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
