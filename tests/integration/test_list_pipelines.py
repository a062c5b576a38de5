"""``culm.api.list_pipelines``: filters, pages, counts, newest first, root pipelines only, refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from components import gate
from engine_fixtures import finish, refused, run, wait_state
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, SubProcess, Var, build_tree

pytestmark = pytest.mark.timeout(60)

ITEM_KEYS = {"id", "name", "state", "created_time", "started_time", "archived_time"}


def named_tree(name: str, code: str = "example_component", sub: bool = False) -> dict:
    start = EmptyStartEvent()
    act = ServiceActivity(component_code=code)
    act.component.inputs.gate = Var(type=Var.PLAIN, value=name)
    if sub:
        inner = EmptyStartEvent()
        inner.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
        start.extend(SubProcess(start=inner)).extend(act).extend(EmptyEndEvent())
    else:
        start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    tree["name"] = name
    return tree


def test_filters_pages_and_counts(runtime):
    tag = uuid.uuid4().hex[:8]
    before = datetime.now(UTC) - timedelta(seconds=1)
    done = [finish(runtime, named_tree(f"nightly-{tag}-{i}", sub=True))["id"] for i in range(3)]
    failing = run(runtime, named_tree(f"Nightly-{tag}-bad", code="t_fail"))
    wait_state(runtime, failing, "RUNNING")
    gated = named_tree(f"other-{tag}", code="t_gate")
    revoked = run(runtime, gated)
    wait_state(runtime, next(iter(gated["activities"])), "RUNNING")
    assert api.revoke_pipeline(runtime, revoked).result
    gate(f"other-{tag}").set()

    everything = api.list_pipelines(runtime, name=tag)
    assert everything.result, everything.message
    data = everything.data
    assert data["total"] == 5
    assert data["counts"] == {"FINISHED": 3, "RUNNING": 1, "REVOKED": 1}
    # Newest first; subprocesses are never listed.
    assert [item["id"] for item in data["items"]] == [revoked, failing, *reversed(done)]
    first = data["items"][-1]
    assert set(first) == ITEM_KEYS
    assert first["name"] == f"nightly-{tag}-0" and first["state"] == "FINISHED"
    for key in ("created_time", "started_time", "archived_time"):
        assert first[key].tzinfo is not None and first[key] >= before

    nightly = api.list_pipelines(runtime, name=f"NIGHTLY-{tag}", state=["finished", "RUNNING"]).data
    assert nightly["total"] == 4 and nightly["counts"] == {"FINISHED": 3, "RUNNING": 1}
    assert api.list_pipelines(runtime, name=tag, state="REVOKED").data["items"][0]["id"] == revoked

    page = api.list_pipelines(runtime, name=tag, limit=2, offset=1).data
    assert [item["id"] for item in page["items"]] == [failing, done[2]]
    assert page["total"] == 5

    assert api.list_pipelines(runtime, name=tag, created_after=datetime.now(UTC) + timedelta(hours=1)).data == {
        "total": 0, "counts": {}, "items": []}
    older = api.list_pipelines(runtime, name=tag, created_before=first["created_time"] + timedelta(microseconds=1))
    assert [item["id"] for item in older.data["items"]] == [done[0]]
    # A name with LIKE's wildcards matches them literally.
    assert api.list_pipelines(runtime, name=f"{tag}_%").data["total"] == 0


@pytest.mark.parametrize(("kwargs", "fragments"), [
    ({"state": "DONE"}, ("state 'DONE' is not a state", "FINISHED")),
    ({"state": 3}, ("state must be a state name",)),
    ({"limit": -1}, ("limit must be an int from 0 to 1000",)),
    ({"limit": 5000}, ("limit must be an int from 0 to 1000",)),
    ({"offset": "x"}, ("offset must be an int",)),
    ({"created_after": datetime(2026, 1, 1)}, ("created_after must be a timezone-aware datetime",)),
    ({"created_before": "yesterday"}, ("created_before must be a timezone-aware datetime",)),
    ({"name": 5}, ("name must be a string",)),
])
def test_bad_arguments_are_refused(runtime, kwargs, fragments):
    refused(api.list_pipelines(runtime, **kwargs), *fragments)


def test_failed_node_counts_of_a_page_in_one_read(runtime):
    tag = uuid.uuid4().hex[:8]
    done = finish(runtime, named_tree(f"done-{tag}"))["id"]
    failing_tree = named_tree(f"failing-{tag}", code="t_fail", sub=True)
    failing = run(runtime, failing_tree)
    wait_state(runtime, next(node_id for node_id, node in failing_tree["activities"].items()
                             if node.get("component", {}).get("code") == "t_fail"), "FAILED")
    gated = named_tree(f"gated-{tag}", code="t_gate")
    waiting = run(runtime, gated)
    wait_state(runtime, next(iter(gated["activities"])), "RUNNING")
    try:
        items = api.list_pipelines(runtime, name=tag).data["items"]
        assert {item["id"]: item["state"] for item in items} == {done: "FINISHED", failing: "RUNNING",
                                                                 waiting: "RUNNING"}
        with runtime.store.reading() as unit:  # a root with no failed node is left out
            assert unit.failed_node_counts([item["id"] for item in items]) == {failing: 1}
            assert unit.failed_node_counts([]) == {}
    finally:
        gate(f"gated-{tag}").set()


def test_callback_waits_of_a_page_in_one_read(runtime):
    # The console's list names the nodes of a RUNNING pipeline that wait for a callback (one read
    # for the page); a node still executing, or failed, waits for none.
    from culm.core import waits

    tag = uuid.uuid4().hex[:8]
    inner = EmptyStartEvent()
    waiter = ServiceActivity(component_code="t_callback")
    inner.extend(waiter).extend(EmptyEndEvent())
    start = EmptyStartEvent()
    start.extend(SubProcess(start=inner)).extend(EmptyEndEvent())
    nested = build_tree(start)
    nested["name"] = f"nested-{tag}"
    calling = run(runtime, nested)
    wait_state(runtime, waiter.id, "RUNNING")
    failing_tree = named_tree(f"failing-{tag}", code="t_fail")
    failing = run(runtime, failing_tree)
    wait_state(runtime, next(iter(failing_tree["activities"])), "FAILED")
    gated = named_tree(f"gated-{tag}", code="t_gate")
    executing = run(runtime, gated)
    wait_state(runtime, next(iter(gated["activities"])), "RUNNING")
    try:
        def entry() -> dict:
            return api.get_pipeline_states(runtime, calling).data[calling]["children"][waiter.id]

        wait_until(lambda: (entry().get("wait_reason") or {}).get("kind") == "callback", 10, 0.02,
                   what="the callback wait")
        version = entry()["version"]
        with runtime.store.reading() as unit:
            found = waits.callback_waits(unit, [calling, failing, executing])
            assert waits.callback_waits(unit, []) == {}
        assert found == {calling: {waiter.id: {"kind": "callback", "version": version,
                                               "text": f"waits for a callback with version {version}"}}}
    finally:
        gate(f"gated-{tag}").set()
        assert api.revoke_pipeline(runtime, calling).result
