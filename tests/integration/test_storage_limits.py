"""Validation refuses what storage cannot take (issue 14, item 5), on every backend.

Ids longer than the id columns, ids and keys holding a NUL or a lone surrogate, values nested
deeper than culm.model.limits.MAX_VALUE_DEPTH, and payloads no serialiser takes are refused with a
message naming the node id (or argument) and field, and nothing is stored; never a driver error
from deep inside a run.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from engine_fixtures import finish, node_state, outputs, refused, run, wait_state
from support import wait_until

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.model import limits

pytestmark = pytest.mark.timeout(60)


# Over limits.MAX_PAYLOAD_BYTES once encoded (JSON writes each character as a 6-character escape,
# its backslash escaped again in a MySQL statement): 21 MB, over MariaDB's 16 MiB packet.
HUGE = "\u4e2d" * 3_000_000
# As large, and it does not compress (a large tree is stored compressed): 3,000,000 CJK characters drawn at random.
NOISE = "".join(chr(c) for c in random.Random(11).choices(range(0x4E00, 0x9FA5), k=3_000_000))


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def tree_with(change: Callable[[EmptyStartEvent, ServiceActivity], Data | None]) -> tuple[dict, ServiceActivity]:
    start, act = EmptyStartEvent(), ServiceActivity(component_code="t_echo")
    data = change(start, act)
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start, data=data), act


def _set_id(node: Any, ident: str) -> None:
    node.id = ident


def _input(act: ServiceActivity, key: str, value: Any) -> None:
    act.component.inputs[key] = Var(type=Var.PLAIN, value=value)


# (case, how to spoil the tree, fragments the refusal must name)
TREE_CASES: list[tuple[str, Callable[[EmptyStartEvent, ServiceActivity], Data | None], list[str]]] = [
    ("node id too long", lambda s, a: _set_id(a, "a" * 65), ["a" * 65, "65 characters long; at most 64"]),
    ("NUL in a node id", lambda s, a: _set_id(a, "a\x00b"), ["'a\\x00b'", "NUL character"]),
    ("lone surrogate in a node id", lambda s, a: _set_id(s, "s\udcffs"), ["'s\\udcffs'", "lone surrogate"]),
    ("context key too long", lambda s, a: Data(inputs={"${" + "k" * 300 + "}": Var(type=Var.PLAIN, value=1)}),
     ["data.inputs", "303 characters long; at most 255"]),
    ("NUL in a context key", lambda s, a: Data(inputs={"${k\x00}": Var(type=Var.PLAIN, value=1)}),
     ["data.inputs", "'${k\\x00}'", "NUL character"]),
    ("lone surrogate in an input key", lambda s, a: _input(a, "x\udcff", 1),
     ["component input key 'x\\udcff'", "lone surrogate"]),
    ("input nested too deeply", lambda s, a: _input(a, "x", nested(5000)),
     ["component input 'x' is nested more than 100 levels deep"]),
    ("context value nested too deeply", lambda s, a: Data(inputs={"${d}": Var(type=Var.SPLICE, value=nested(200))}),
     ["data.inputs.${d}", "nested more than 100 levels deep"]),
]


@pytest.mark.parametrize(("case", "change", "fragments"), TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_trees_the_store_cannot_hold_are_refused(runtime, case, change, fragments):
    tree, act = tree_with(change)
    res = api.run_pipeline(runtime, tree)
    refused(res, *fragments)
    if case == "input nested too deeply":
        refused(res, act.id)  # the node at fault
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_a_tree_too_large_to_store_is_refused(runtime):
    # MariaDB refused the 21 MB row with a dropped connection: "run_pipeline failed: InterfaceError: (0, '')".
    tree, act = tree_with(lambda s, a: _input(a, "x", NOISE))  # ~10 MB once compressed
    refused(api.run_pipeline(runtime, tree), tree["id"], "tree takes 10,", "bytes once stored, over the 7,000,000")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}
    fits, _ = tree_with(lambda s, a: _input(a, "x", HUGE[:400_000]))  # 2.8 MB, and twice that in outputs
    finish(runtime, fits, timeout=30)


def test_a_large_tree_that_compresses_runs_and_a_value_too_large_fails_its_node_naming_it(runtime):
    # The tree is stored compressed (21 MB of JSON escapes of one character), so it is accepted;
    # the input itself is stored as it is and cannot be: the node fails, naming it.
    tree, act = tree_with(lambda s, a: _input(a, "x", HUGE))
    assert api.run_pipeline(runtime, tree).result
    wait_state(runtime, act.id, "FAILED", timeout=60)
    assert "'x': it takes 21,000,004 bytes once encoded, over the 7,000,000 stored" in outputs(runtime, act.id)["ex_data"]


def test_a_pickled_tree_too_large_to_store_is_refused_by_validation(runtime):
    # A tree holding a set is stored pickled. It was validated, indexed and given its contexts,
    # then refused by the store with "it takes 10,666,768 bytes once encoded, over the 7,000,000
    # stored", naming no pipeline (a 99,000-node one: after 6 s and 330 MB).
    tree, act = tree_with(lambda s, a: _input(a, "x", {"a" * 8_000_000}))
    refused(api.run_pipeline(runtime, tree), tree["id"], "tree takes 10,66", "bytes once stored, over the 7,000,000")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}
    fits, act = tree_with(lambda s, a: _input(a, "x", {"a" * 2_000_000}))  # a pickled tree under the limit runs
    finish(runtime, fits, timeout=30)
    assert outputs(runtime, act.id)["x"] == {"a" * 2_000_000}


def rows_of_acts(outer: int, inner: int) -> dict:
    """start -> ``outer`` acts -> a subprocess of ``inner`` acts -> end."""
    start, end, sub_start = EmptyStartEvent(), EmptyEndEvent(), EmptyStartEvent()
    tail = sub_start
    for _ in range(inner):
        tail = tail.extend(ServiceActivity(component_code="t_echo"))
    tail.extend(EmptyEndEvent())
    tail = start
    for _ in range(outer):
        tail = tail.extend(ServiceActivity(component_code="t_echo"))
    tail.extend(SubProcess(start=sub_start)).extend(end)
    return build_tree(start)


def test_a_tree_with_more_nodes_than_allowed_is_refused_naming_the_count(runtime, monkeypatch):
    monkeypatch.setattr(limits, "MAX_TREE_NODES", 12)
    finish(runtime, rows_of_acts(1, 6), timeout=30)  # 4 nodes around the subprocess, 8 in it: 12
    tree = rows_of_acts(2, 6)
    refused(api.run_pipeline(runtime, tree), f"{tree['id']}: tree is too large: it has 13 nodes and 11 flows, over the 12 nodes",
            "culm.model.limits.MAX_TREE_NODES")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_ids_and_keys_that_differ_only_by_case_run_or_are_refused_naming_them(runtime, request):
    # MariaDB's tables compare text ignoring case, accents and trailing spaces (its default
    # collation): `${ip}` and `${IP}` in one tree, or ids 'step1' and 'STEP1', were
    # "run_pipeline failed: IntegrityError: (1062, "Duplicate entry ...")" with a traceback, and
    # an id 'stép' after a stored 'step' was refused as if it were the same.
    mariadb = request.node.callspec.params["runtime"].startswith("mariadb")
    echo = ServiceActivity(component_code="t_echo")
    echo.component.inputs.x = Var(type=Var.SPLICE, value="${ip}-${IP}")
    start = EmptyStartEvent()
    start.extend(echo).extend(EmptyEndEvent())
    keys = build_tree(start, data=Data(inputs={"${ip}": Var(type=Var.PLAIN, value="1"),
                                               "${IP}": Var(type=Var.PLAIN, value="2")}))
    ids, (step, step_upper) = rows_of_acts(2, 1), ("step" + keys["id"][1:9], "STEP" + keys["id"][1:9])
    first, second = (a for a in ids["activities"] if ids["activities"][a]["type"] == "ServiceActivity")
    text = json.dumps(ids).replace(first, step).replace(second, step_upper)
    ids = json.loads(text)
    for tree, fragments in ((keys, ["context keys '${ip}' and '${IP}' are one key to the database"]),
                            (ids, [f"node ids '{step}' and '{step_upper}' are one id to the database"])):
        res = api.run_pipeline(runtime, tree)
        if mariadb:
            refused(res, tree["id"], *fragments, "ignoring case, accents and trailing spaces")
            assert api.get_pipeline_states(runtime, tree["id"]).data == {}
        else:
            assert res.result, res.message
            wait_state(runtime, tree["id"], "FINISHED", timeout=30)
    if not mariadb:
        assert outputs(runtime, echo.id)["x"] == "1-2"


def test_commands_naming_an_id_that_differs_only_by_case_find_nothing(runtime):
    # On MariaDB a read by id found the row of the stored lookalike: "revoke_pipeline failed:
    # KeyError: 'PCASE...'" with a traceback, instead of "does not exist".
    wait, start = ServiceActivity(component_code="t_callback"), EmptyStartEvent()
    start.extend(wait).extend(EmptyEndEvent())
    root, node = run(runtime, build_tree(start)).upper(), wait.id.upper()
    wait_state(runtime, wait.id, "RUNNING")
    refused(api.revoke_pipeline(runtime, root), f"pipeline {root} does not exist")
    refused(api.pause_pipeline(runtime, root), root)
    refused(api.forced_fail_activity(runtime, node), node)
    assert api.get_pipeline_states(runtime, root).data == {}
    assert node_state(runtime, wait.id)["state"] == "RUNNING"


def test_a_tree_with_many_gateway_pairs_runs(runtime):
    # 500 pairs of 64-character ids: their map (kept with the run's options, a TEXT column on
    # MySQL) is 67 kB, and MariaDB failed the run with "Data too long for column 'options'".
    start = tail = EmptyStartEvent()
    first = None
    for i in range(500):
        pg, act, cg = ParallelGateway(id=f"pg{i:03}".ljust(64, "p")), ServiceActivity(component_code="t_echo"), \
            ConvergeGateway(id=f"cg{i:03}".ljust(64, "c"))
        first = first or act
        tail = tail.extend(pg).connect(act).to(pg).converge(cg)
    tail.extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, first.id, "FINISHED", timeout=30)  # the tree stored, read back and walked
    assert api.revoke_pipeline(runtime, tree["id"]).result


def test_a_variable_referring_to_more_keys_than_a_text_column_holds_is_refused(runtime):
    keys = ["${" + f"k{i:03}".ljust(250, "k") + "}" for i in range(300)]
    data = {key: Var(type=Var.PLAIN, value=1) for key in keys}
    data["${all}"] = Var(type=Var.SPLICE, value="".join(keys))
    tree, _ = tree_with(lambda s, a: Data(inputs=data))
    refused(api.run_pipeline(runtime, tree), "context variable ${all} refers to 300 keys",
            "bytes once stored: at most 65,535 fit")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_a_pipeline_name_the_store_cannot_hold_is_refused(runtime):
    tree, _ = tree_with(lambda s, a: None)
    tree["name"] = "report \udcff"  # names are kept in a column of their own, for listing
    refused(api.run_pipeline(runtime, tree), tree["id"], "pipeline name holds a lone surrogate")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_ids_and_values_at_the_limits_run(runtime):
    start, act, end = EmptyStartEvent(id="s" * limits.ID_LENGTH), ServiceActivity(component_code="t_echo"), \
        EmptyEndEvent()
    act.component.inputs.x = Var(type=Var.PLAIN, value=nested(limits.MAX_VALUE_DEPTH))
    act.component.inputs["k\u00e9\u4e2d"] = Var(type=Var.PLAIN, value="text with \x00 and \udcff inside a value")
    start.extend(act).extend(end)
    key = "${" + "k" * (limits.KEY_LENGTH - 3) + "}"
    tree = build_tree(start, data=Data(inputs={key: Var(type=Var.PLAIN, value=1)}))
    finish(runtime, tree)
    assert outputs(runtime, act.id)["x"] == nested(limits.MAX_VALUE_DEPTH)
    assert outputs(runtime, act.id)["k\u00e9\u4e2d"] == "text with \x00 and \udcff inside a value"


def test_subprocess_param_keys_are_context_keys(runtime):
    inner_start = EmptyStartEvent()
    inner_start.extend(ServiceActivity(component_code="t_echo")).extend(EmptyEndEvent())
    sub = SubProcess(start=inner_start, params={"${" + "p" * 300 + "}": Var(type=Var.PLAIN, value=1)})
    start = EmptyStartEvent()
    start.extend(sub).extend(EmptyEndEvent())
    tree = build_tree(start)
    refused(api.run_pipeline(runtime, tree), sub.id, "param key", "at most 255")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


@pytest.mark.parametrize("argument", ["root_pipeline_data", "root_pipeline_context", "subprocess_context"])
def test_run_pipeline_arguments_the_store_cannot_hold_are_refused(runtime, argument):
    for bad, fragments in (({"d": nested(5000)}, ["nested more than 100 levels deep"]),
                           ({"lock": threading.Lock()}, ["lock"]),
                           ({"${k\x00}": 1}, ["NUL character"]),
                           ({"${huge}": HUGE}, ["${huge}", "it takes 21,000,004 bytes once encoded"])):
        if argument == "root_pipeline_data" and "${k\x00}" in bad:
            continue  # pipeline data keys live inside the stored value: a NUL there is fine
        tree = with_subprocess()
        named = argument if not {"lock", "${huge}"} & set(bad) else ""
        refused(api.run_pipeline(runtime, tree, **{argument: bad}), named, *fragments)
        assert api.get_pipeline_states(runtime, tree["id"]).data == {}
    refused(api.run_pipeline(runtime, with_subprocess(), queue="q" * 300), "queue", "at most 255")


def with_subprocess() -> dict:
    """A tree with a subprocess (so that subprocess_context is stored too)."""
    inner = EmptyStartEvent()
    inner.extend(ServiceActivity(component_code="t_echo")).extend(EmptyEndEvent())
    start = EmptyStartEvent()
    start.extend(SubProcess(start=inner)).extend(EmptyEndEvent())
    return build_tree(start)


def test_payloads_of_commands_the_store_cannot_hold_are_refused(runtime):
    start, fail, cb, end = EmptyStartEvent(), ServiceActivity(component_code="t_fail"), \
        ServiceActivity(component_code="t_callback"), EmptyEndEvent()
    start.extend(fail).extend(cb).extend(end)
    tree = build_tree(start, data=Data(inputs={"${k}": Var(type=Var.PLAIN, value="before")}))
    run(runtime, tree)
    wait_state(runtime, fail.id, "FAILED")
    for data, fragment in ((nested(5000), "retry data for node"), ({"x": threading.Lock()}, "'x'"),
                           ({"x": HUGE}, "'x': it takes 21,000,0")):
        refused(api.retry_node(runtime, fail.id, data=data), fail.id, fragment)
        assert node_state(runtime, fail.id)["state"] == "FAILED" and node_state(runtime, fail.id)["retry"] == 0
    for values, fragment in (({"${k}": nested(5000)}, "nested more than 100"), ({"${k}": threading.Lock()}, "${k}"),
                             ({"${k}": HUGE}, "${k}")):
        refused(api.update_context_values(runtime, tree["id"], values), fragment)
    assert api.skip_node(runtime, fail.id).result
    version = wait_state(runtime, cb.id, "RUNNING")["version"]
    wait_until(lambda: outputs(runtime, cb.id).get("waiting"), 10, what="the callback node to wait")
    for data, fragment in ((nested(5000), "nested more than 100"), ({"x": threading.Lock()}, "callback data"),
                           ({"x": HUGE}, "bytes once encoded")):
        refused(api.callback(runtime, cb.id, version, data), cb.id, fragment)
    assert api.callback(runtime, cb.id, version, {"k": "${k}"}).result  # nothing of the refused ones stayed
    wait_state(runtime, tree["id"], "FINISHED")
    assert outputs(runtime, cb.id)["callback_data"] == {"k": "${k}"}


def test_a_log_line_longer_than_a_text_column_is_kept_cut(runtime):
    """A log line over MySQL's TEXT column (65,535 bytes) failed its node on MariaDB alone, with the
    driver's "Data too long" and every log line lost; its length comes from an input, so from a
    template too. On every backend the line is now kept cut, with a note, and the node finishes."""
    act = ServiceActivity(component_code="t_log")
    act.component.inputs.who = Var(type=Var.SPLICE, value="${'\u4e2d' * 30000}")  # 90,000 bytes of UTF-8
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    finish(runtime, build_tree(start), timeout=30)
    logs = api.get_node_logs(runtime, act.id).data
    first = logs.split("\n")[0]
    assert first.startswith("[INFO] hello " + "\u4e2d" * 21000), first[:40]
    assert first.endswith("\u4e2d [... 30,013 characters in all, cut to fit a log line]"), first[-80:]
    assert len(first.encode()) <= limits.MAX_LOG_LINE_BYTES
    assert "second line" in logs.split("\n")[1]


@pytest.mark.parametrize("kind", ["mariadb", "mysqlclient"])
def test_a_mysql_server_that_would_cut_values_is_strict_for_culm(kind):
    # Found probing (session 15): on a server whose sql_mode is not strict (MySQL before 5.7, or
    # sql_mode='' in a my.cnf; simulated by the URL's init_command) a value too long for its column
    # was stored cut with a warning nobody reads: a check of culm's that missed one kept data corrupted.
    from backends import create_database, drop_database
    from sqlalchemy.exc import DataError

    from culm.storage.migrate import upgrade
    from culm.storage.sql.base import SqlStore

    url = create_database(kind)
    store = SqlStore(url + "&init_command=SET sql_mode=''", create=False)
    try:
        upgrade(store)
        with store.engine.connect() as conn:
            with pytest.raises(DataError, match="Data too long for column 'name'"):
                conn.exec_driver_sql("INSERT INTO culm_api_token (id, role, name, salt, secret_hash, created_time) "
                                     "VALUES ('t', 'viewer', %s, 's', 'h', 1)", ("n" * 300,))
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM culm_api_token").scalar() == 0
    finally:
        store.engine.dispose()
        drop_database(url)


def test_a_mysql_server_whose_packets_are_too_small_is_refused_at_open(tmp_path, monkeypatch):
    # A statement over max_allowed_packet (4 MiB by default on MySQL 5.7) is answered by a dropped
    # connection, which looks like a network fault: a node with 5 MB of inputs would have had its
    # write sent again for ever, RUNNING. Now the runtime (and the CLI) refuses such a server at once.
    import subprocess
    import sys

    from backends import create_database, drop_database

    import culm
    from culm.errors import DatabaseSettingsError
    from culm.storage.sql import mysql

    url = create_database("mariadb")
    try:
        monkeypatch.setattr(mysql, "LEAST_PACKET_BYTES", 64 * 1024 * 1024)  # this server has 16 MiB
        with pytest.raises(DatabaseSettingsError, match=r"max_allowed_packet is 16,777,216 bytes; culm needs at "
                                                        r"least 67,108,864 .* max_allowed_packet=64M under \[mysqld\]"):
            culm.Runtime(url)
        monkeypatch.undo()
        from culm.storage.migrate import upgrade
        from culm.storage.sql.base import SqlStore

        store = SqlStore(url, create=False)  # 16 MiB is enough
        upgrade(store)
        store.engine.dispose()
        culm.Runtime(url, workers=0).close()
        code = ("import sys; from culm.storage.sql import mysql; mysql.LEAST_PACKET_BYTES = 1 << 30; "
                "from culm.cli import main; sys.exit(main(['list', '--db', sys.argv[1]]))")
        res = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert res.returncode == 4, res.stderr
        assert "max_allowed_packet is 16,777,216 bytes; culm needs at least 1,073,741,824" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        drop_database(url)


def test_a_loop_number_no_column_holds_is_refused_naming_it(runtime):
    # Found probing (session 15): GET /api/v1/nodes/ID/histories?loop=10**30 answered 500 on SQLite
    # (the driver's OverflowError); PostgreSQL and MariaDB answered [].
    act = ServiceActivity(component_code="t_attrs", loop_config={"enable": True, "loop_times": 2})
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    finish(runtime, build_tree(start))
    for read in (api.get_node_histories, api.get_node_short_histories):
        for loop in (10**30, -2, "1", True):
            refused(read(runtime, act.id, loop), "loop must be -1 (every loop) or a loop number from 0 to 2**62")
        assert [h["loop"] for h in read(runtime, act.id, 1).data] == [1]
        assert read(runtime, act.id, 2**62).data == []
