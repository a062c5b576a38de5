"""A new operator's first hour with the console (headless Chromium, as ``test_web_console.py``):
where the failed node of a big pipeline is, a revoke that asks first, refusals that stand out,
empty lists that say why, what a viewer may not do, and a token revoked mid-session."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from support import wait_until
from test_web_console import browser, node_id, sign_in  # noqa: F401 - fixture
from web_support import ServerThread, click, count, divide_tree, find, read, served, text  # noqa: F401 - fixture

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, SubProcess, Var, build_tree
from culm.web.app import create_app

pytestmark = pytest.mark.timeout(300)


def _divide(name: str, divisor: int) -> ServiceActivity:
    act = ServiceActivity(component_code="web_divide", name=name)
    act.component.inputs.divisor = Var(type=Var.PLAIN, value=divisor)
    return act


def long_line_tree(size: int, failing_at: int) -> dict:
    """start → ``size`` activities in a row, the one at ``failing_at`` dividing by 0 → end."""
    start = EmptyStartEvent(name="start")
    node: Any = start
    for i in range(size):
        node = node.extend(_divide("broken step" if i == failing_at else f"step {i}", 0 if i == failing_at else 1))
    node.extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = "long line"
    return tree


def nested_failure_tree() -> dict:
    """start → prepare → subprocess(start → broken inside → end) → end."""
    inner = EmptyStartEvent(name="sub start")
    inner.extend(_divide("broken inside", 0)).extend(EmptyEndEvent(name="sub end"))
    start = EmptyStartEvent(name="start")
    start.extend(_divide("prepare", 1)).extend(SubProcess(start=inner, name="payments")).extend(EmptyEndEvent())
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = "nested failure"
    return tree


def in_view(driver: Any, node: str) -> bool:
    """Whether the graph box of ``node`` is inside the visible part of the scrolled graph."""
    return bool(driver.execute_script("""
        const g = document.querySelector('#graph .node[data-node-id="' + arguments[0] + '"]');
        if (!g) return false;
        const r = g.getBoundingClientRect(), w = document.getElementById('graph-wrap').getBoundingClientRect();
        return r.width > 0 && r.left >= w.left && r.right <= w.right && r.top >= w.top && r.bottom <= w.bottom;""",
        node))


def test_the_failed_node_of_a_long_pipeline_is_named_in_the_header_and_one_click_away(
        browser: Any, served: Any) -> None:  # noqa: F811
    # A row of 300 boxes is 40,000 px wide: the failed one was off screen, and nothing said a node
    # failed (the pipeline stays RUNNING, as in bamboo).
    tree = long_line_tree(300, failing_at=250)
    broken = node_id(tree, "broken step")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(broken, "FAILED", 60)
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}")
    find(browser, '#graph-wrap[data-ready="1"]', 60)
    wait_until(lambda: "1 node(s) need attention: broken step (failed)" in text(browser, "#attention"), 20, 0.05,
               what="the header to name the failed node")
    assert not in_view(browser, broken)
    click(browser, f'#attention a[data-node="{broken}"]')
    wait_until(lambda: text(browser, "#panel-title") == "broken step", 20, 0.05, what="the node's panel")
    assert "ZeroDivisionError" in read(browser, "#ex-data-view")
    wait_until(lambda: in_view(browser, broken), 10, 0.05, what="the failed node scrolled into view")

    # Skipped from its panel, it no longer waits for anyone: the line goes.
    click(browser, '#node-actions button[data-action="skip"]')
    served.wait_state(tree["id"], "FINISHED", 60)
    wait_until(lambda: count(browser, "#attention") == 0, 20, 0.05, what="the attention line to go")
    # ... leaving nothing in its place (a new user's trial: the header of a pipeline with no node
    # needing attention ended in the text "null").
    assert not text(browser, ".pipeline-head").endswith("null"), text(browser, ".pipeline-head")


def test_a_failure_inside_a_closed_subprocess_is_named_and_opened(browser: Any, served: Any) -> None:  # noqa: F811
    tree = nested_failure_tree()
    broken = node_id(tree["activities"][next(n for n, a in tree["activities"].items() if a["type"] == "SubProcess")]
                     ["pipeline"], "broken inside")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(broken, "FAILED", 60)
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}")
    find(browser, '#graph-wrap[data-ready="1"]', 60)
    assert count(browser, f'#graph .node[data-node-id="{broken}"]') == 0  # the subprocess is drawn closed
    click(browser, f'#attention a[data-node="{broken}"]')
    find(browser, f'#graph .node.selected[data-node-id="{broken}"][data-state="FAILED"]')
    # the panel reads the node first: it follows the selection
    wait_until(lambda: text(browser, "#panel-title") == "broken inside", 20, 0.05, what="the node's panel")


def test_revoke_asks_first_and_a_refused_command_stands_out(browser: Any, served: Any) -> None:  # noqa: F811
    tree = divide_tree(1, name="asks-first", wait=True)
    wait = node_id(tree, "approve")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(wait, "RUNNING")
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}")
    find(browser, '#graph-wrap[data-ready="1"]', 60)
    wait_until(lambda: "approve (waits for a callback)" in text(browser, "#attention"), 20, 0.05,
               what="the waiting node in the header")

    # A careless click on Revoke, then Cancel: nothing happens.
    click(browser, '#pipeline-actions button[data-action="revoke"]')
    alert = wait_until(lambda: _alert(browser), 10, 0.05, what="the confirmation")
    assert "cannot be resumed" in alert.text
    alert.dismiss()
    assert served.state(tree["id"]) == "RUNNING"

    # A command the engine refuses (someone force-failed the node a moment before): a red note
    # with the engine's reason, which stays longer than a success note.
    click(browser, f'#attention a[data-node="{wait}"]')
    find(browser, '#node-actions button[data-action="callback"]')
    shown = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        culm.api('/api/v1/nodes/' + arguments[0] + '/forced-fail', {json: {ex_data: 'by someone else'}}).then(() => {
          document.querySelector('#node-actions button[data-action="callback"]').click();
          document.querySelector('#action-submit').click();
          const t = document.getElementById('toast');
          const seen = () => t.hidden ? setTimeout(seen, 20) : done([t.textContent, t.className]);
          seen();
        });""", wait)
    assert shown[0].startswith("Callback refused: cannot call back node") and "FAILED" in shown[0], shown
    assert shown[1] == "error"

    # Revoke, confirmed: the pipeline is revoked.
    click(browser, '#pipeline-actions button[data-action="revoke"]')
    wait_until(lambda: _alert(browser), 10, 0.05, what="the confirmation").accept()
    served.wait_state(tree["id"], "REVOKED")
    wait_until(lambda: "REVOKED" in text(browser, "#pipeline-state"), 20, 0.05, what="the REVOKED badge")


def test_a_revoked_pipeline_offers_no_command_on_its_nodes(browser: Any, served: Any) -> None:  # noqa: F811
    # A new user's trial: once revoked, the header still said "1 node(s) need attention: approve
    # (waits for a callback)" and the node's panel offered Callback... and Force fail..., which the
    # engine refuses in a revoked pipeline; a failed node there offered Retry... and Skip.
    tree = divide_tree(0, name="revoked-no-commands")
    broken = node_id(tree, "divide")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(broken, "FAILED")
    waiting = divide_tree(1, name="revoked-callback", wait=True)
    approve = node_id(waiting, "approve")
    assert api.run_pipeline(served.runtime, waiting).result
    served.wait_state(approve, "RUNNING")
    sign_in(browser, served, "operator")
    for pipeline, node, before in ((tree, broken, "retry"), (waiting, approve, "callback")):
        browser.get(f"{served.url}/#/p/{pipeline['id']}/n/{node}")
        find(browser, f'#node-actions button[data-action="{before}"]')
        assert count(browser, "#attention") == 1
        assert api.revoke_pipeline(served.runtime, pipeline["id"]).result
        wait_until(lambda: "REVOKED" in text(browser, "#pipeline-state"), 20, 0.05, what="the REVOKED badge")
        wait_until(lambda: "is revoked" in text(browser, "#wait-reason"), 20, 0.05, what="the reason to say revoked")
        assert count(browser, "#node-actions button") == 0
        assert count(browser, "#attention") == 0
        browser.get(f"{served.url}/#/p/{pipeline['id']}/n/{node}")  # and so from a fresh load
        find(browser, "#wait-reason")
        wait_until(lambda: "is revoked" in text(browser, "#wait-reason"), 20, 0.05, what="the panel")
        assert count(browser, "#node-actions button") == 0 and count(browser, "#attention") == 0


def _alert(driver: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
        alert.text  # noqa: B018 - raises when there is none
        return alert
    except NoAlertPresentException:
        return None


def test_a_viewer_is_told_why_there_are_no_buttons(browser: Any, served: Any) -> None:  # noqa: F811
    tree = divide_tree(0, name="viewer-told")
    act = node_id(tree, "divide")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(act, "FAILED")
    sign_in(browser, served, "viewer")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{act}")
    find(browser, "#read-only")
    # Read in the page, not through an element handle: the panel redraws on live changes.
    wait_until(lambda: "viewer role" in text(browser, "#read-only")
               and "retry, skip need an operator or admin token" in " ".join(text(browser, "#read-only").split()),
               20, 0.05, what="the viewer's note naming the role and what it lacks")
    assert count(browser, "#node-actions button") == 0


def test_empty_lists_say_why(browser: Any, served: Any, tmp_path: Path) -> None:  # noqa: F811
    tree = divide_tree(1, name="one-to-list")
    assert api.run_pipeline(served.runtime, tree).result
    sign_in(browser, served, "viewer")
    browser.get(f"{served.url}/#/?name=no-pipeline-is-called-this")
    wait_until(lambda: "No pipeline matches these filters" in text(browser, "#list-empty"), 20, 0.05,
               what="the filtered empty list")
    click(browser, "#list-empty a")
    wait_until(lambda: count(browser, "#pipelines tr[data-id]") > 0, 20, 0.05, what="all pipelines again")

    runtime = culm.Runtime(f"sqlite:///{tmp_path / 'empty.db'}", workers=0)
    app = create_app(runtime)
    token, _ = app.state.tokens.create("viewer", "empty")
    try:
        with ServerThread(app) as server:
            browser.get(server.url + "/")
            browser.execute_script("sessionStorage.clear()")
            browser.refresh()
            find(browser, "#token").send_keys(token)
            click(browser, "#signin button")
            wait_until(lambda: "No pipelines in this database yet" in text(browser, "#list-empty"), 20, 0.05,
                       what="the empty database's list")
            assert "culm run TREE.json" in text(browser, "#list-empty")
    finally:
        runtime.close()


def test_a_token_revoked_mid_session_signs_out_without_a_stray_error(browser: Any, served: Any) -> None:  # noqa: F811
    app = served.app
    token, info = app.state.tokens.create("operator", "short-lived")
    browser.get(served.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    find(browser, "#token").send_keys(token)
    click(browser, "#signin button")
    find(browser, "#pipelines tr[data-id]")
    app.state.tokens.revoke(info.id)
    browser.get(f"{served.url}/#/components")
    browser.get(f"{served.url}/#/")
    wait_until(lambda: "Your token was refused" in text(browser, "#signin-error"), 30, 0.05, what="the sign-in page")
    assert browser.execute_script("return document.getElementById('toast').hidden") is True, text(browser, "#toast")


def test_the_list_marks_running_pipelines_that_wait_on_failed_nodes(browser: Any, served: Any) -> None:  # noqa: F811
    # A pipeline with a failed node stays RUNNING (as in bamboo): the list looked the same as for
    # one that runs fine. The REST list says how many nodes failed; the console shows it.
    failing = divide_tree(0, name="list-marks-failing")
    fine = divide_tree(1, name="list-marks-fine", wait=True)
    for tree in (failing, fine):
        assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(node_id(failing, "divide"), "FAILED")
    served.wait_state(node_id(fine, "approve"), "RUNNING")
    with served.client("viewer") as client:
        items = {i["id"]: i for i in client.get("/api/v1/pipelines", params={"state": "RUNNING"}).json()["items"]}
    assert items[failing["id"]]["failed_nodes"] == 1 and items[fine["id"]]["failed_nodes"] == 0
    divide = node_id(failing, "divide")
    assert items[failing["id"]]["failed_node_list"] == [{"node_id": divide, "name": "divide"}]
    sign_in(browser, served, "viewer")
    row = f'#pipelines tr[data-id="{failing["id"]}"]'
    find(browser, row)
    # Which node, by name (the id, which `culm retry` takes, in the tooltip).
    wait_until(lambda: "1 failed node(s): divide" in text(browser, row), 20, 0.05, what="the failed node's name")
    title = read(browser, f"{row} .failed-nodes", "title")
    assert title.endswith(f"\ndivide ({divide})"), title
    assert "failed node" not in read(browser, f'#pipelines tr[data-id="{fine["id"]}"]')


def test_the_list_follows_nodes_that_fail_and_are_skipped(browser: Any, served: Any) -> None:  # noqa: F811
    # The list followed root pipelines' own changes only, and a node's failure does not change its
    # pipeline's state: the count came with the next reload. Now it comes and goes live.
    tree = divide_tree(1, name="list-follows", wait=True)
    wait = node_id(tree, "approve")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(wait, "RUNNING")
    sign_in(browser, served, "viewer")
    find(browser, f'#pipelines tr[data-id="{tree["id"]}"]')
    # The first read, then the one the stream's "hello" asks for: from here on only live changes reload.
    wait_until(lambda: int(browser.execute_script("return document.getElementById('pipelines').dataset.loads || 0"))
               >= 2, 20, 0.05, what="the list to follow the stream")
    browser.execute_script("window.__sameDocument = true")
    assert api.forced_fail_activity(served.runtime, wait, "stop").result
    row = f'#pipelines tr[data-id="{tree["id"]}"]'
    wait_until(lambda: "1 failed node(s)" in text(browser, row), 20, 0.05, what="the count to appear")
    assert api.skip_node(served.runtime, wait).result
    served.wait_state(tree["id"], "FINISHED")
    wait_until(lambda: "FINISHED" in text(browser, row) and "failed node" not in text(browser, row), 20, 0.05,
               what="the count to go")
    assert browser.execute_script("return window.__sameDocument") is True


def test_a_click_anywhere_on_a_pipelines_row_opens_it(browser: Any, served: Any) -> None:  # noqa: F811
    # A new user's trial: clicking a row of the list (its id, its state) did nothing; only the name
    # was a link. The whole row opens the pipeline now, on the failed node's attention line.
    failing = divide_tree(0, name="row-opens")
    assert api.run_pipeline(served.runtime, failing).result
    served.wait_state(node_id(failing, "divide"), "FAILED")
    sign_in(browser, served, "operator")
    click(browser, f'#pipelines tr[data-id="{failing["id"]}"] td.muted')  # the id cell, no link in it
    find(browser, '#graph-wrap[data-ready="1"]', 60)
    assert browser.current_url.endswith("#/p/" + failing["id"])
    wait_until(lambda: "divide (failed)" in text(browser, "#attention"), 20, 0.05, what="the attention line")
