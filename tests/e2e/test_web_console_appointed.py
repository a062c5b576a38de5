"""An appointed pause on a node no branch has reached yet, in the console (headless Chromium, as
``test_web_console.py``): the graph, the attention line and the node's panel show it, and the
panel takes it back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support import wait_until
from test_web_console import browser, node_id, sign_in  # noqa: F401 - fixture
from web_support import click, find, served, text  # noqa: F401 - fixture

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

pytestmark = pytest.mark.timeout(300)


def waiting_then_after() -> dict:
    """start → approve (waits for a callback) → after → end."""
    start = EmptyStartEvent(name="start")
    after = ServiceActivity(component_code="web_divide", name="after")
    after.component.inputs.divisor = Var(type=Var.PLAIN, value=1)
    start.extend(ServiceActivity(component_code="web_wait", name="approve")).extend(after).extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = "appointed"
    return tree


def state_of(driver: Any, node: str) -> str:
    return str(driver.execute_script(
        "const g = document.querySelector('#graph .node[data-node-id=\"' + arguments[0] + '\"]');"
        "return g ? g.getAttribute('data-state') : '';", node))


def pause_of(driver: Any, node: str) -> str:
    return str(driver.execute_script(
        "const g = document.querySelector('#graph .node[data-node-id=\"' + arguments[0] + '\"]');"
        "return g ? (g.getAttribute('data-pause') || '') : '';", node))


def open_waiting(browser: Any, served: Any, role: str) -> tuple[str, str, str]:  # noqa: F811
    """Run ``waiting_then_after`` until "approve" waits and open its page signed in as ``role``:
    the ids of the pipeline, "approve" and "after"."""
    tree = waiting_then_after()
    root, approve, after = tree["id"], node_id(tree, "approve"), node_id(tree, "after")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(approve, "RUNNING")
    sign_in(browser, served, role)
    browser.get(f"{served.url}/#/p/{root}")
    wait_until(lambda: state_of(browser, approve) == "RUNNING", 20, 0.05, what="the page")
    return root, approve, after


def test_an_appointed_pause_ahead_of_the_branch_is_shown_and_taken_back(browser: Any, served: Any) -> None:  # noqa: F811
    root, approve, after = open_waiting(browser, served, "operator")
    assert state_of(browser, after) == "none"
    assert api.pause_node_appoint(served.runtime, after).result  # the page is open: a live change
    with served.client("viewer") as viewer:  # REST: the node's state and why it will wait
        entry = viewer.get(f"/api/v1/pipelines/{root}").json()["children"][after]
        assert entry["state"] == "SUSPENDED" and entry["wait_reason"]["kind"] == "pause_appointed"
        assert entry["wait_reason"]["reached"] is False
        assert viewer.get(f"/api/v1/nodes/{after}").json()["state"]["state"] == "SUSPENDED"
    # The graph: outlined as a pause set ahead, not filled as a branch stopped there.
    wait_until(lambda: state_of(browser, after) == "SUSPENDED" and pause_of(browser, after) == "ahead", 20, 0.05,
               what="the appointed node painted")
    assert pause_of(browser, approve) == ""
    wait_until(lambda: "after (pause set ahead)" in text(browser, "#attention"), 20, 0.05,
               what="the attention line to name it")
    click(browser, f'#attention a[data-node="{after}"]')
    wait_until(lambda: "appointed a pause here" in text(browser, "#wait-reason"), 20, 0.05, what="the panel's reason")
    assert text(browser, '#panel button[data-action="resume"]') == "Remove the pause"
    click(browser, '#panel button[data-action="resume"]')
    served.wait_state(after, "READY")
    wait_until(lambda: state_of(browser, after) == "READY" and pause_of(browser, after) == "", 20, 0.05,
               what="the node repainted")
    assert "after" not in text(browser, "#attention")


def test_the_panel_of_a_node_not_reached_yet_says_so(browser: Any, served: Any) -> None:  # noqa: F811
    """``GET /api/v1/nodes/{id}`` is a 404 for such a node (``get_node_debug_info`` refuses it):
    the panel still shows the node from the tree, with the refusal's text as its note."""
    _root, _approve, after = open_waiting(browser, served, "viewer")
    click(browser, f'#graph .node[data-node-id="{after}"]')
    wait_until(lambda: "has not been reached yet" in text(browser, "#node-problem"), 20, 0.05,
               what="the panel's note")
    assert text(browser, "#panel-title") == "after"
    assert "not reached" in text(browser, "#panel-state")
    assert "web_divide" in text(browser, "#panel")
