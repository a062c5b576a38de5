"""What a new user's trial (session 19) missed in the console (headless Chromium, as
``test_web_console.py``): which pipelines of the list wait for a callback, why a paused pipeline
waits, a skipped node's old error shown as history, why a callback failed without ex_data, and no
"Pause here" inside a revoked subprocess."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support import wait_until
from test_web_console import browser, node_id, sign_in  # noqa: F401 - fixture
from web_support import count, divide_tree, find, read, served, text  # noqa: F401 - fixture

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, SubProcess, Var, build_tree

pytestmark = pytest.mark.timeout(300)


def _inner(tree: dict, name: str) -> str:
    """The id of the node ``name`` inside the tree's (one) subprocess."""
    sub = next(a for a in tree["activities"].values() if a["type"] == "SubProcess")
    return node_id(sub["pipeline"], name)


def _waiting_version(served: Any, node: str) -> str:  # noqa: F811
    """The version a callback to ``node`` sends, once the node waits for one."""
    def entry() -> dict:
        return (api.get_children_states(served.runtime, node).data or {}).get(node) or {}

    wait_until(lambda: (entry().get("wait_reason") or {}).get("kind") == "callback", 30, 0.05,
               what=f"{node} to wait for a callback")
    return str(entry()["version"])


def test_the_list_names_the_nodes_a_running_pipeline_waits_a_callback_at(browser: Any, served: Any) -> None:  # noqa: F811
    waiting = divide_tree(1, name="list-waits-callback", wait=True)
    failing = divide_tree(0, name="list-waits-failing")
    approve = node_id(waiting, "approve")
    for tree in (waiting, failing):
        assert api.run_pipeline(served.runtime, tree).result
    _waiting_version(served, approve)
    served.wait_state(node_id(failing, "divide"), "FAILED")
    with served.client("viewer") as client:
        items = {i["id"]: i for i in client.get("/api/v1/pipelines", params={"state": "RUNNING"}).json()["items"]}
    (wait,) = items[waiting["id"]]["callback_nodes"]
    assert wait["node_id"] == approve and wait["kind"] == "callback" and "waits for a callback" in wait["text"]
    assert wait["name"] == "approve"
    assert items[failing["id"]]["callback_nodes"] == []
    assert (items[waiting["id"]]["callback_node_count"], items[failing["id"]]["callback_node_count"]) == (1, 0)
    sign_in(browser, served, "viewer")
    row = f'#pipelines tr[data-id="{waiting["id"]}"]'
    find(browser, row)
    # By its name (session 19's trial: the node's id, which says nothing of which step it is); the
    # id, which `culm callback` takes, in the tooltip.
    wait_until(lambda: "waiting for a callback at approve" in text(browser, row), 20, 0.05,
               what="the waiting node in the row")
    title = read(browser, f"{row} .callback-nodes", "title")
    assert title.startswith(f"approve ({approve}): "), title
    assert "waiting for a callback" not in text(browser, f'#pipelines tr[data-id="{failing["id"]}"]')
    # Called back, it waits no more: the mark goes with the next read of the list.
    assert api.callback(served.runtime, approve, _waiting_version(served, approve), {"ok": True}).result
    served.wait_state(waiting["id"], "FINISHED")
    wait_until(lambda: "FINISHED" in text(browser, row) and "waiting for a callback" not in text(browser, row),
               20, 0.05, what="the mark to go")


def test_a_paused_pipeline_says_why_in_its_header(browser: Any, served: Any) -> None:  # noqa: F811
    tree = divide_tree(1, name="paused-says-why", wait=True)
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(node_id(tree, "approve"), "RUNNING")
    assert api.pause_pipeline(served.runtime, tree["id"]).result
    served.wait_state(tree["id"], "SUSPENDED")
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}")
    find(browser, '#pipeline-actions button[data-action="resume"]')
    wait_until(lambda: "pipeline paused by an operator" in text(browser, "#pipeline-wait"), 20, 0.05,
               what="the wait reason in the header")
    assert api.resume_pipeline(served.runtime, tree["id"]).result
    wait_until(lambda: count(browser, "#pipeline-wait") == 0, 20, 0.05, what="the reason to go once resumed")
    assert api.revoke_pipeline(served.runtime, tree["id"]).result


def test_a_skipped_nodes_error_is_shown_as_history(browser: Any, served: Any) -> None:  # noqa: F811
    tree = divide_tree(0, name="skipped-error-history")
    broken = node_id(tree, "divide")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(broken, "FAILED")
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{broken}")
    assert "ZeroDivisionError" in read(browser, "#ex-data-view")
    assert "Error (ex_data)" in text(browser, "#panel")
    assert api.skip_node(served.runtime, broken).result
    served.wait_state(tree["id"], "FINISHED")
    wait_until(lambda: "Error before the skip" in text(browser, "#panel"), 20, 0.05, what="the error as history")
    assert "ZeroDivisionError" in text(browser, "#ex-data-view")


def test_a_callback_that_fails_without_ex_data_says_which_call_returned_false(browser: Any, served: Any) -> None:  # noqa: F811
    start = EmptyStartEvent(name="start")
    start.extend(ServiceActivity(component_code="web_wait_refuses", name="refuser")).extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = "refusing-callback"
    node = node_id(tree, "refuser")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(node, "RUNNING")
    assert api.callback(served.runtime, node, _waiting_version(served, node), {}).result
    served.wait_state(node, "FAILED")
    assert "ex_data" not in api.get_execution_data_outputs(served.runtime, node).data  # stored as bamboo does
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{node}")
    wait_until(lambda: f"node {node} failed: component web_wait_refuses's schedule() returned False and set no "
               "ex_data" in text(browser, "#ex-data-view"), 20, 0.05, what="the explanation")
    assert api.revoke_pipeline(served.runtime, tree["id"]).result


def test_no_pause_is_offered_inside_a_revoked_subprocess(browser: Any, served: Any) -> None:  # noqa: F811
    inner = EmptyStartEvent(name="sub start")
    after = ServiceActivity(component_code="web_divide", name="after approve")
    after.component.inputs.divisor = Var(type=Var.PLAIN, value=1)
    inner.extend(ServiceActivity(component_code="web_wait", name="inner approve")).extend(after).extend(
        EmptyEndEvent(name="sub end"))
    start = EmptyStartEvent(name="start")
    start.extend(SubProcess(start=inner, name="sub")).extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = "revoked-subprocess-pause"
    sub = next(n for n, a in tree["activities"].items() if a["type"] == "SubProcess")
    approve, later = _inner(tree, "inner approve"), _inner(tree, "after approve")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(approve, "RUNNING")
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{later}")
    find(browser, '#node-actions button[data-action="pause"]')  # not reached, in a live subprocess
    assert api.revoke_pipeline(served.runtime, sub).result
    served.wait_state(sub, "REVOKED")
    assert served.state(tree["id"]) == "RUNNING"
    assert not api.pause_node_appoint(served.runtime, later).result  # the engine refuses it
    wait_until(lambda: count(browser, '#node-actions button[data-action="pause"]') == 0, 20, 0.05,
               what="the pause to be no longer offered")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{later}")  # and so from a fresh load
    wait_until(lambda: text(browser, "#panel-title") == "after approve", 20, 0.05, what="the panel")
    assert count(browser, "#node-actions button") == 0
    assert api.revoke_pipeline(served.runtime, tree["id"]).result
