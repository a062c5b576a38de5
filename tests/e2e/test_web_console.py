"""The web console in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

Set ``CULM_SCREENSHOTS=docs`` to write the README's screenshots into ``docs/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_until
from web_support import (  # noqa: F401 - fixtures
    ServerThread,
    attributes,
    chain_tree,
    click,
    count,
    divide_tree,
    find,
    free_port,
    read,
    served,
    showcase_tree,
    text,
)

from culm import api
from culm.web.app import create_app

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1500,900"]


@contextlib.contextmanager
def chromium(env: dict[str, str] | None = None) -> Iterator[Any]:
    """A headless Chromium driven by Selenium; ``env`` adds to its environment (``TZ``: its time zone)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="culm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER, env={**os.environ, **(env or {})}), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def sign_in(driver: Any, served: Any, role: str) -> None:  # noqa: F811
    driver.get(served.url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    box = find(driver, "#token")
    box.send_keys(served.tokens[role])
    click(driver, "#signin button")
    wait_until(lambda: role in text(driver, "#whoami"), 20, 0.05, what=f"signed in as {role}")


def node_id(tree: dict, name: str) -> str:
    for group in ("activities", "gateways"):
        for node in tree[group].values():
            if node.get("name") == name:
                return str(node["id"])
    raise KeyError(name)


def screenshot(driver: Any, name: str, tmp: Path) -> None:
    folder = ROOT / "docs" if os.environ.get("CULM_SCREENSHOTS") == "docs" else tmp
    driver.save_screenshot(str(folder / name))


def test_sign_in_page_refuses_a_wrong_token_and_keeps_no_cookie(browser: Any, served: Any) -> None:  # noqa: F811
    browser.get(served.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(served.url + "/#/")
    find(browser, "#token")
    # Signed out, the links to the pages that need a token are hidden (their own display:flex kept them shown).
    assert browser.execute_script("return getComputedStyle(document.getElementById('nav')).display") == "none"
    find(browser, "#token").send_keys("culm_wrong_token")
    click(browser, "#signin button")
    wait_until(lambda: "unknown or revoked" in text(browser, "#signin-error"), 20, 0.05, what="the refusal")
    sign_in(browser, served, "viewer")
    assert browser.get_cookies() == []
    assert browser.execute_script("return sessionStorage.getItem('culm.token')") == served.tokens["viewer"]


def test_failed_node_is_red_with_its_error_then_retried_with_new_inputs(browser: Any, served: Any,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    tree = divide_tree(0, name="nightly-report")
    act = node_id(tree, "divide")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(act, "FAILED")
    sign_in(browser, served, "operator")
    click(browser, f'#pipelines tr[data-id="{tree["id"]}"] a')
    node = f'#graph .node[data-node-id="{act}"][data-state="FAILED"]'
    find(browser, node)
    fill = browser.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0]).querySelector('.shape')).fill", node)
    assert fill == "rgb(239, 68, 68)"  # red
    browser.execute_script("window.__sameDocument = true")
    click(browser, node)
    assert "ZeroDivisionError" in read(browser, "#ex-data-view")
    buttons = attributes(browser, "#node-actions button", "data-action")
    assert buttons == ["retry", "skip"]
    screenshot(browser, "console-node.png", tmp_path)
    click(browser, '#node-actions button[data-action="retry"]')
    divisor = find(browser, '#retry-fields [data-key="divisor"]')  # one field per input, typed
    assert (divisor.get_attribute("value"), divisor.get_attribute("data-kind")) == ("0", "number")
    divisor.clear()
    divisor.send_keys("4")
    wait_until(lambda: text(browser, "#retry-changes") == "Changes: divisor: 0 → 4", 10, 0.05, what="the change shown")
    click(browser, "#action-submit")
    # The page follows the change feed: no reload, the node and the pipeline turn FINISHED.
    find(browser, f'#graph .node[data-node-id="{act}"][data-state="FINISHED"]', 30)
    wait_until(lambda: "FINISHED" in text(browser, "#pipeline-state"), 30, 0.05,
               what="the pipeline badge to say FINISHED")
    assert browser.execute_script("return window.__sameDocument") is True
    assert api.get_execution_data_outputs(served.runtime, act).data["result"] == 25.0
    wait_until(lambda: '"result": 25' in text(browser, "#outputs-view"), 20, 0.05, what="the new output")
    wait_until(lambda: count(browser, "#history tr") == 2, 20, 0.05, what="one earlier run in the history")
    assert "dividing 100 by 4" in read(browser, "#logs-view")


def test_viewer_sees_the_page_but_no_control_buttons_and_gets_403(browser: Any, served: Any) -> None:  # noqa: F811
    tree = divide_tree(0, name="viewer-sees", wait=True)
    act = node_id(tree, "divide")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(act, "FAILED")
    sign_in(browser, served, "viewer")
    browser.get(f"{served.url}/#/p/{tree['id']}")
    click(browser, f'#graph .node[data-node-id="{act}"][data-state="FAILED"]')
    assert "ZeroDivisionError" in read(browser, "#ex-data-view")
    assert count(browser, "#node-actions button") == 0
    assert count(browser, "#pipeline-actions button") == 0
    result = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/v1/nodes/' + arguments[0] + '/retry', {method: 'POST', headers: {
            'Authorization': 'Bearer ' + sessionStorage.getItem('culm.token'), 'Content-Type': 'application/json'},
            body: '{}'}).then(r => done(r.status));""", act)
    assert result == 403
    assert served.state(act) == "FAILED"


def test_list_filters_and_counts_then_a_running_graph_with_a_subprocess(browser: Any, served: Any,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    tree = showcase_tree(name="quarterly-close")
    wait = node_id(tree, "approve")
    sub = node_id(tree, "subprocess")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(wait, "RUNNING")
    served.wait_state(sub, "FINISHED")
    sign_in(browser, served, "operator")
    find(browser, f'#pipelines tr[data-id="{tree["id"]}"]')
    assert read(browser, '#counts .chip[data-state="RUNNING"]').startswith("RUNNING ")
    screenshot(browser, "console-list.png", tmp_path)
    click(browser, '#counts .chip[data-state="RUNNING"]')
    wait_until(lambda: browser.execute_script(
        "const rows = [...document.querySelectorAll('#pipelines tr[data-id]')];"
        "return rows.length > 0 && rows.every(r => r.textContent.includes('RUNNING'))"),
        20, 0.05, what="filter by state")
    assert count(browser, f'#pipelines tr[data-id="{tree["id"]}"]') == 1
    browser.get(f"{served.url}/#/")
    find(browser, "#f-name").send_keys("quarterly")
    click(browser, ".filters button")
    wait_until(lambda: count(browser, "#pipelines tr[data-id]") == 1, 20, 0.05, what="filter by name")

    browser.get(f"{served.url}/#/p/{tree['id']}")
    find(browser, f'#graph .node[data-node-id="{wait}"][data-state="RUNNING"]')
    assert count(browser, '#graph .node[data-type="ParallelGateway"]') == 1
    assert count(browser, '#graph .node[data-type="ConvergeGateway"]') == 1
    inner = [n["id"] for n in tree["activities"][sub]["pipeline"]["activities"].values()][0]
    assert count(browser, f'#graph .node[data-node-id="{inner}"]') == 0
    click(browser, f'#graph [data-toggle="{sub}"]')  # expand the subprocess
    find(browser, f'#graph .node[data-node-id="{inner}"][data-state="FINISHED"]')
    screenshot(browser, "console-graph.png", tmp_path)
    click(browser, f'#graph .node[data-node-id="{wait}"]')
    find(browser, "#panel-title")
    buttons = attributes(browser, "#node-actions button", "data-action")
    assert buttons == ["callback", "forced-fail"]
    assert attributes(browser, "#pipeline-actions button", "data-action") == ["pause", "revoke"]
    click(browser, '#node-actions button[data-action="callback"]')
    area = find(browser, "#callback-data")
    area.clear()
    area.send_keys('{"approved": "yes"}')
    click(browser, "#action-submit")
    wait_until(lambda: "FINISHED" in text(browser, "#pipeline-state"), 30, 0.05,
               what="the pipeline to finish after the callback")
    assert api.get_execution_data_outputs(served.runtime, wait).data["got"] == {"approved": "yes"}


def test_an_open_form_survives_live_changes_of_the_pipeline(browser: Any, served: Any) -> None:  # noqa: F811
    """Typing a callback's data while the pipeline moves: each change redraws the panel, and the
    form, its text and its focus stay as long as the node still waits for the callback."""
    tree = showcase_tree(name="form-survives")
    wait = node_id(tree, "approve")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(wait, "RUNNING")
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{wait}")
    click(browser, '#node-actions button[data-action="callback"]')
    area = find(browser, "#callback-data")
    area.clear()
    area.send_keys('{"approved": "half-typed')
    before = int(browser.execute_script("return document.getElementById('panel').dataset.updates"))
    assert api.pause_pipeline(served.runtime, tree["id"]).result
    wait_until(lambda: "SUSPENDED" in text(browser, "#pipeline-state"), 20, 0.05, what="the pause to show")
    assert api.resume_pipeline(served.runtime, tree["id"]).result
    wait_until(lambda: "RUNNING" in text(browser, "#pipeline-state"), 20, 0.05, what="the resume to show")
    wait_until(lambda: int(browser.execute_script("return document.getElementById('panel').dataset.updates")) > before,
               20, 0.05, what="the panel to be brought up to date")
    assert browser.execute_script("return document.activeElement.id") == "callback-data"
    area = find(browser, "#callback-data")
    area.send_keys('"}')
    assert area.get_attribute("value") == '{"approved": "half-typed"}'
    click(browser, "#action-submit")
    wait_until(lambda: "FINISHED" in text(browser, "#pipeline-state"), 30, 0.05, what="the pipeline to finish")
    assert api.get_execution_data_outputs(served.runtime, wait).data["got"] == {"approved": "half-typed"}


def test_a_live_change_elsewhere_leaves_the_open_panel_as_it_is(browser: Any, served: Any) -> None:  # noqa: F811
    """The panel of a node that did not change is brought up to date without being drawn again:
    redrawn on every change of the pipeline, it was replaced under the reader (and under a click)."""
    tree = divide_tree(1, name="panel-stays", wait=True)
    divide, approve = node_id(tree, "divide"), node_id(tree, "approve")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(approve, "RUNNING")
    sign_in(browser, served, "viewer")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{divide}")
    wait_until(lambda: '"result": 100' in text(browser, "#outputs-view"), 20, 0.05, what="the panel")
    # The stream's "hello" asks for a read of its own: let it come and go before marking the panel.
    wait_until(lambda: browser.execute_script("return Number(document.getElementById('panel').dataset.updates)") >= 2,
               20, 0.05, what="the read the stream asks for")
    browser.execute_script("document.getElementById('panel-title').dataset.mark = 'first'")
    updates = int(browser.execute_script("return Number(document.getElementById('panel').dataset.updates)"))
    assert api.pause_pipeline(served.runtime, tree["id"]).result
    wait_until(lambda: "SUSPENDED" in text(browser, "#pipeline-state"), 20, 0.05, what="the pause to show")
    wait_until(lambda: int(browser.execute_script("return Number(document.getElementById('panel').dataset.updates)"))
               > updates, 20, 0.05, what="the panel brought up to date")
    assert read(browser, "#panel-title", "data-mark") == "first"
    assert api.revoke_pipeline(served.runtime, tree["id"]).result


def test_the_page_says_when_live_updates_stop_and_catches_up_when_they_return(browser: Any,  # noqa: F811
                                                                             served: Any) -> None:  # noqa: F811
    """The service stops under an open page: the header says the updates are lost (the page kept
    showing what it knew, as if nothing moved); back, the notice goes and the page reads again."""
    tree = showcase_tree(name="service-restarts")
    wait = node_id(tree, "approve")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(wait, "RUNNING")
    port = free_port()
    with ServerThread(create_app(served.runtime), port) as second:
        browser.get(second.url + "/")
        browser.execute_script("sessionStorage.clear()")
        browser.refresh()
        find(browser, "#token").send_keys(served.tokens["operator"])
        click(browser, "#signin button")
        browser.get(f"{second.url}/#/p/{tree['id']}")
        find(browser, f'#graph .node[data-node-id="{wait}"][data-state="RUNNING"]')
        assert not find_displayed(browser, "#offline")
    wait_until(lambda: find_displayed(browser, "#offline"), 20, 0.05, what="the notice that live updates stopped")
    assert "Live updates lost" in text(browser, "#offline")
    assert api.callback(served.runtime, wait, served_version(served, wait), {"approved": "while away"}).result
    served.wait_state(tree["id"], "FINISHED")
    with ServerThread(create_app(served.runtime), port):
        wait_until(lambda: not find_displayed(browser, "#offline"), 30, 0.05, what="the notice to go")
        wait_until(lambda: "FINISHED" in text(browser, "#pipeline-state"), 30, 0.05,
                   what="the page to catch up with what happened meanwhile")


def find_displayed(driver: Any, css: str) -> bool:
    return bool(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return !!e && getComputedStyle(e).display !== 'none'", css))


def served_version(service: Any, node: str) -> str:
    return str(api.get_children_states(service.runtime, node).data[node]["version"])


def test_component_catalogue(browser: Any, served: Any) -> None:  # noqa: F811
    sign_in(browser, served, "viewer")
    browser.get(f"{served.url}/#/components")
    row = read(browser, '#components tr[data-code="web_divide"]')
    assert "divisor" in row and "result" in row


def test_a_thousand_node_pipeline_renders_in_under_two_seconds(browser: Any, served: Any) -> None:  # noqa: F811
    import time

    tree = chain_tree(1000, gate=True)
    nodes = 2 + len(tree["activities"]) + len(tree["gateways"])
    assert nodes >= 1000
    gate = node_id(tree, "gate")
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(gate, "RUNNING")
    sign_in(browser, served, "viewer")
    timings = []
    for _ in range(2):
        browser.get(f"{served.url}/#/")
        browser.get(f"{served.url}/#/p/{tree['id']}")
        wrap = '#graph-wrap[data-ready="1"]'
        find(browser, wrap, 60)
        timings.append(int(read(browser, wrap, "data-render-ms")))
        print("layout", read(browser, wrap, "data-layout-ms"), "ms, drawing", read(browser, wrap, "data-draw-ms"), "ms")
        assert count(browser, "#graph .node") == nodes
    print(f"1,000-node pipeline page: rendered in {timings} ms")
    assert min(timings) < 2000, timings
    # Released, the thousand nodes run while the page is open: it follows them all without a reload.
    browser.execute_script("window.__sameDocument = true")
    began = time.monotonic()
    assert api.callback(served.runtime, gate, api.get_children_states(served.runtime, gate).data[gate]["version"],
                        {}).result
    served.wait_state(tree["id"], "FINISHED", 120)
    ran = time.monotonic() - began
    wait_until(lambda: browser.execute_script(
        "return document.querySelectorAll('#graph .node[data-state=\"FINISHED\"]').length") == nodes,
        120, 0.05, what="all nodes FINISHED on the page")
    shown = time.monotonic() - began
    print(f"1,000 nodes ran in {ran:.1f} s; the page showed them all FINISHED after {shown:.1f} s")
    assert browser.execute_script("return window.__sameDocument") is True


def test_names_with_control_and_bidirectional_characters_show_escaped(browser: Any, served: Any) -> None:  # noqa: F811
    """A tree's names may hold any character (bamboo takes them): the console shows each one that
    could mislead as its \\uXXXX escape, as `culm` does. A right-to-left override in a node's name
    showed the rest of it reversed ("divide\\u202efdp.exe" read "divideexe.pdf")."""
    tree = divide_tree(0, name="report\u202egnp.exe")
    act = node_id(tree, "divide")
    tree["activities"][act]["name"] = "divide\u202efdp.exe\x1b[2J"
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(act, "FAILED")
    sign_in(browser, served, "operator")
    row = f'#pipelines tr[data-id="{tree["id"]}"]'
    wait_until(lambda: "report\\u202egnp.exe" in text(browser, row), 20, 0.05, what="the escaped pipeline name")
    assert "\u202e" not in text(browser, row)
    click(browser, f"{row} a")
    node = f'#graph .node[data-node-id="{act}"]'
    find(browser, node)
    assert text(browser, f"{node} text") == "divide\\u202efdp.exe\\u001b[2J"[:28]
    click(browser, node)
    find(browser, "#ex-data-view")
    shown = text(browser, "#panel")
    assert "divide\\u202efdp.exe\\u001b[2J" in shown and "\u202e" not in shown and "\x1b" not in shown
