"""A demanding new user's trial of the console (headless Chromium, as ``test_web_console.py``):
untrusted text stays text, times name their zone, a gateway's skip says where each flow leads,
and the graph says when it cuts a name (the whole name announced and in the tooltip)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support import wait_until
from test_web_console import browser, chromium, node_id, sign_in  # noqa: F401 - fixture
from web_support import (  # noqa: F401 - fixture
    chain_tree,
    click,
    divide_tree,
    failing_gateways_tree,
    find,
    read,
    served,
    text,
)

from culm import api
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ServiceActivity,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(300)

# Markup a tree from elsewhere may hold: were any of it parsed, the page would gain an element or
# its title would change.
PAYLOAD = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script><b id="bold">'


def _echo(name: str, value: str, fail: bool = False) -> ServiceActivity:
    act = ServiceActivity(component_code="web_echo", name=name)
    act.component.inputs.text = Var(type=Var.PLAIN, value=value)
    act.component.inputs.fail = Var(type=Var.PLAIN, value=fail)
    return act


def payload_tree() -> dict:
    start = EmptyStartEvent(name=PAYLOAD + " start")
    start.extend(_echo(PAYLOAD + " ok", PAYLOAD)).extend(_echo(PAYLOAD + " fails", PAYLOAD + "\nthen " + PAYLOAD,
                                                                 fail=True)).extend(EmptyEndEvent(name=PAYLOAD))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = PAYLOAD + " pipeline"
    return tree


def failed_payload(served: Any) -> tuple[dict, str]:  # noqa: F811
    """A payload tree started and run to its failed node: the tree and that node's id."""
    tree = payload_tree()
    assert api.run_pipeline(served.runtime, tree).result
    fails = node_id(tree, PAYLOAD + " fails")
    served.wait_state(fails, "FAILED")
    return tree, fails


def injected(driver: Any) -> list[str]:
    """What the payload would have made of the page had it been parsed as markup."""
    return list(driver.execute_script("""
        const found = [...document.querySelectorAll('img, b#bold, main script, #panel script')].map(e => e.outerHTML);
        if (document.title !== 'culm console') found.push('title: ' + document.title);
        return found;"""))


def test_markup_in_names_inputs_outputs_logs_and_errors_is_shown_as_text(browser: Any, served: Any) -> None:  # noqa: F811
    tree, fails = failed_payload(served)
    sign_in(browser, served, "operator")
    browser.get(served.url + "/#/?name=" + "pipeline")
    find(browser, f'#pipelines tr[data-id="{tree["id"]}"]')
    assert text(browser, f'#pipelines tr[data-id="{tree["id"]}"] td.name-cell') == PAYLOAD + " pipeline"
    failed = f'#pipelines tr[data-id="{tree["id"]}"] .failed-nodes'
    assert read(browser, failed).startswith("1 failed node(s): " + PAYLOAD[:40]), read(browser, failed)
    assert f"\n{PAYLOAD[:60]}… ({fails})" in read(browser, failed, "title")
    assert injected(browser) == []

    browser.get(served.url + f"/#/p/{tree['id']}")
    find(browser, "#graph-wrap[data-ready]")
    assert text(browser, ".pipeline-head h2") == PAYLOAD + " pipeline"
    click(browser, f'#attention a[data-node="{fails}"]')
    wait_until(lambda: "then" in text(browser, "#logs-view"), 20, 0.05, what="the failed node's logs")
    assert text(browser, "#panel-title") == PAYLOAD + " fails"
    assert text(browser, "#ex-data-view") == f"failed on {PAYLOAD}\nthen {PAYLOAD}"
    assert PAYLOAD.replace('"', '\\"') in text(browser, "#inputs-view")
    assert PAYLOAD.replace('"', '\\"') in text(browser, "#outputs-view")
    assert f"echo: {PAYLOAD}" in text(browser, "#logs-view")
    # The retry form holds the text as a value, not as markup.
    click(browser, '#node-actions [data-action="retry"]')
    assert read(browser, '#retry-fields [data-key="text"]', "value") == f"{PAYLOAD}\nthen {PAYLOAD}"
    graph_names = browser.execute_script(
        "return [...document.querySelectorAll('#graph .node')].map(g => g.getAttribute('aria-label'))")
    assert any(PAYLOAD + " ok" in label for label in graph_names), graph_names
    assert injected(browser) == []


def test_times_name_their_time_zone(browser: Any, served: Any) -> None:  # noqa: F811
    tree, fails = failed_payload(served)
    sign_in(browser, served, "viewer")
    browser.get(served.url + "/#/")
    row = f'#pipelines tr[data-id="{tree["id"]}"]'
    find(browser, row)
    created = browser.execute_script(f"return document.querySelector('{row}').cells[3].textContent")
    # Chromium's zone names: "UTC", "GMT+1", "CET", "PST"...; without one, 11:15 could be any of them.
    zone = re.compile(r"(UTC|GMT([+-]\d+(:\d\d)?)?|\b[A-Z]{3,5})$")
    assert zone.search(created), created
    browser.get(served.url + f"/#/p/{tree['id']}/n/{fails}")
    wait_until(lambda: text(browser, "#panel-title") == PAYLOAD + " fails", 20, 0.05, what="the panel")
    started = browser.execute_script(
        "return [...document.querySelectorAll('#panel .kv tr')].find(r => r.cells[0].textContent === 'started')"
        ".cells[1].textContent")
    assert zone.search(started), started


def test_gateway_skip_names_where_each_flow_leads_and_takes_the_one_chosen(browser: Any, served: Any) -> None:  # noqa: F811
    tree = failing_gateways_tree()
    assert api.run_pipeline(served.runtime, tree).result
    exclusive, conditional = node_id(tree, "exclusive"), node_id(tree, "conditional")
    served.wait_state(exclusive, "FAILED")
    served.wait_state(conditional, "FAILED")
    sign_in(browser, served, "operator")
    browser.get(served.url + f"/#/p/{tree['id']}/n/{exclusive}")
    wait_until(lambda: text(browser, "#panel-title") == "exclusive", 20, 0.05, what="the gateway's panel")
    assert text(browser, '#node-actions [data-action="skip-exclusive-gateway"]') == "Skip along…"
    click(browser, '#node-actions [data-action="skip-exclusive-gateway"]')
    find(browser, "#skip-flow")
    options = browser.execute_script(
        "return [...document.querySelectorAll('#skip-flow option')].map(o => [o.value, o.textContent, o.title])")
    gateway = tree["gateways"][exclusive]
    by_target = {tree["flows"][flow]["target"]: flow for flow in gateway["outgoing"]}
    names = {target: tree["activities"][target]["name"] for target in by_target}
    for value, label, title in options:
        target = tree["flows"][value]["target"]
        assert label == f"{names[target]} (if {gateway['conditions'][value]['evaluate']})", label
        assert title == value
    right = next(target for target, name in names.items() if name == "right")
    browser.execute_script("document.getElementById('skip-flow').value = arguments[0]", by_target[right])
    click(browser, "#action-submit")
    wait_until(lambda: text(browser, "#toast") == "Skip along: accepted", 20, 0.05, what="the command accepted")
    served.wait_state(right, "FINISHED")
    left = next(target for target, name in names.items() if name == "left")
    assert served.state(left) is None  # only the flow chosen was taken

    # A conditional parallel gateway: one checkbox per flow, each named; none checked sends nothing.
    browser.get(served.url + f"/#/p/{tree['id']}/n/{conditional}")
    wait_until(lambda: text(browser, "#panel-title") == "conditional", 20, 0.05, what="the gateway's panel")
    click(browser, '#node-actions [data-action="skip-conditional-parallel-gateway"]')
    find(browser, "#action-form fieldset.skip-flows")
    labels = browser.execute_script("return [...document.querySelectorAll('#action-form fieldset label')]"
                                    ".map(l => l.textContent.trim())")
    assert sorted(labels) == ["left (if ${v} > 100)", "right (if ${v} > 200)"], labels
    browser.execute_script("document.querySelectorAll('#action-form fieldset input').forEach(c => c.checked = false)")
    click(browser, "#action-submit")
    wait_until(lambda: "choose at least one flow" in text(browser, "#toast"), 10, 0.05, what="the refusal")
    assert served.state(conditional) == "FAILED"


def test_graph_says_when_it_cuts_a_name_and_announces_gateways_by_name(browser: Any, served: Any) -> None:  # noqa: F811
    long_name = "reconcile the ledger of every account opened before the migration"
    start = EmptyStartEvent(name="an event whose name is far too long to fit")
    gateway = ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"}, name="which way")
    start.extend(_echo(long_name, "x")).extend(gateway).connect(_echo("yes", "y"), _echo("no", "n")).converge(
        ConvergeGateway()).extend(EmptyEndEvent())
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = "labels"
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(node_id(tree, "yes"), "FINISHED")
    sign_in(browser, served, "viewer")
    browser.get(served.url + f"/#/p/{tree['id']}")
    find(browser, "#graph-wrap[data-ready]")
    long_id, gateway_id = node_id(tree, long_name), node_id(tree, "which way")
    shown = browser.execute_script("""
        const g = (id) => document.querySelector('#graph .node[data-node-id="' + id + '"]');
        const texts = (id) => [...g(id).querySelectorAll('text')].map(t => t.textContent);
        return { long: texts(arguments[0]), longLabel: g(arguments[0]).getAttribute('aria-label'),
                 longTitle: g(arguments[0]).querySelector('title').textContent,
                 gate: texts(arguments[1]), gateLabel: g(arguments[1]).getAttribute('aria-label'),
                 start: texts(arguments[2]) };""", long_id, gateway_id, tree["start_event"]["id"])
    assert shown["long"][0].endswith("…") and long_name.startswith(shown["long"][0][:-1]), shown
    assert shown["longLabel"] == f"ServiceActivity {long_name}: FINISHED"
    assert shown["longTitle"].startswith(f"{long_name} ({long_id}): FINISHED")
    assert shown["gate"] == ["×", "which way"], shown
    assert shown["gateLabel"] == "ExclusiveGateway which way: FINISHED"
    assert shown["start"][0].endswith("…") and len(shown["start"][0]) == 24, shown
    # Every name is inside the drawing (the start event's, written under it, was cut at its left edge).
    outside = browser.execute_script("""
        const r = document.getElementById('graph').getBoundingClientRect();
        return [...document.querySelectorAll('#graph .node text')].map((t) => [t.textContent, t.getBoundingClientRect()])
          .filter(([, b]) => b.left < r.left || b.right > r.right).map(([name]) => name);""")
    assert outside == [], outside


def test_a_form_opened_while_a_live_refresh_is_on_its_way_stays_open(browser: Any, served: Any) -> None:  # noqa: F811
    tree, fails = failed_payload(served)
    sign_in(browser, served, "operator")
    browser.get(served.url + f"/#/p/{tree['id']}/n/{fails}")
    find(browser, '#node-actions [data-action="retry"]')
    # The page's next read of the node is held (as a slow network would) until the test lets it go.
    browser.execute_script("""
        const real = window.realFetch = window.fetch;
        window.heldReads = [];
        window.fetch = (url, opts) => String(url).startsWith('/api/v1/nodes/')
            ? new Promise((go) => window.heldReads.push(() => go(real(url, opts)))) : real(url, opts);""")
    updates = int(browser.execute_script("return Number(document.getElementById('panel').dataset.updates)"))
    api.pause_pipeline(served.runtime, tree["id"])  # a live change: the page reads the node again
    wait_until(lambda: browser.execute_script("return window.heldReads.length"), 20, 0.05, what="the held read")
    click(browser, '#node-actions [data-action="retry"]')
    find(browser, "#retry-fields")
    browser.execute_script("window.fetch = window.realFetch; window.heldReads.forEach((go) => go())")
    wait_until(lambda: int(browser.execute_script("return Number(document.getElementById('panel').dataset.updates)"))
               > updates, 20, 0.05, what="the panel brought up to date")
    assert text(browser, "#action-form") and find(browser, "#retry-fields", 1)
    assert browser.execute_script("return document.activeElement.closest('#action-form') !== null")
    api.resume_pipeline(served.runtime, tree["id"])


def test_components_page_says_when_a_component_declares_no_inputs(browser: Any, served: Any) -> None:  # noqa: F811
    sign_in(browser, served, "viewer")
    browser.get(served.url + "/#/components")
    find(browser, '#components tr[data-code="web_echo"]')
    cells = browser.execute_script("return [...document.querySelector('#components tr[data-code=\"web_echo\"]').cells]"
                                   ".map(c => c.textContent)")
    assert cells[5] == "none declared", cells
    divide = browser.execute_script("return document.querySelector('#components tr[data-code=\"web_divide\"]')"
                                    ".cells[5].textContent")
    assert divide.startswith("divisor"), divide


def test_date_filters_are_days_of_the_browsers_time_zone(served: Any) -> None:  # noqa: F811
    """A pipeline created now is found by the day it was created on where the browser is: a day of
    UTC instead is a different day in a zone far from it (whichever way, at this hour)."""
    tree, _ = failed_payload(served)
    now = datetime.now(UTC)
    # Kiritimati is UTC+14: from 10:00 UTC its day is already tomorrow's, and "from <that day>"
    # read as UTC starts after now. Etc/GMT+12 is UTC-12: before 12:00 UTC its day is still
    # yesterday, and "before <its tomorrow>" read as UTC ends before now.
    if now.hour >= 10:
        zone, local, field = "Pacific/Kiritimati", now + timedelta(hours=14), "after"
    else:
        zone, local, field = "Etc/GMT+12", now - timedelta(hours=12) + timedelta(days=1), "before"
    with chromium(env={"TZ": zone}) as driver:
        sign_in(driver, served, "viewer")
        driver.get(served.url + f"/#/?{field}={local.date().isoformat()}")
        find(driver, f'#pipelines tr[data-id="{tree["id"]}"]')
        created = driver.execute_script(
            f"return document.querySelector('#pipelines tr[data-id=\"{tree['id']}\"]').cells[3].textContent")
        assert "GMT" in created, created  # the zone is named (Chromium names these two by offset)


def test_a_long_failure_in_the_history_wraps_inside_the_panel(browser: Any, served: Any) -> None:  # noqa: F811
    tree = failing_gateways_tree()
    assert api.run_pipeline(served.runtime, tree).result
    sub = node_id(tree, "subprocess")
    served.wait_state(sub, "FAILED")
    api.retry_subprocess(served.runtime, sub)  # fails again on entry: its first run goes to the history
    wait_until(lambda: api.get_node_histories(served.runtime, sub), 20, 0.05, what="the subprocess's history")
    served.wait_state(sub, "FAILED")
    sign_in(browser, served, "viewer")
    browser.get(served.url + f"/#/p/{tree['id']}/n/{sub}")
    find(browser, "#history")
    result = text(browser, "#history tr:nth-child(2) td:last-child")
    assert result.endswith("the lazy variable exploded"), result
    wide = browser.execute_script("const p = document.getElementById('panel'); return p.scrollWidth - p.clientWidth")
    assert wide <= 0, f"the panel scrolls sideways by {wide} px"


def test_enter_on_a_node_takes_the_keyboard_to_its_panel_and_escape_back(browser: Any, served: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    tree = chain_tree(200, name="keyboard")
    broken = next(a for a in tree["activities"].values() if a["name"] == "b9 step 19")
    broken["component"]["inputs"]["divisor"]["value"] = 0
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(broken["id"], "FAILED")
    sign_in(browser, served, "operator")
    browser.get(served.url + f"/#/p/{tree['id']}")
    find(browser, "#graph-wrap[data-ready]")
    browser.execute_script("document.querySelector(arguments[0]).focus()", f'#graph .node[data-node-id="{broken["id"]}"]')
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_until(lambda: browser.execute_script("return document.activeElement.id") == "panel-title", 20, 0.05,
               what="the panel to take the keyboard")
    assert text(browser, "#panel-title") == "b9 step 19"
    # One Tab reaches the node's first command (not the ~190 nodes drawn after it).
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.execute_script("return document.activeElement.dataset.action") == "retry"
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert browser.execute_script("return document.activeElement.getAttribute('data-node-id')") == broken["id"]
    # A live refresh of the panel leaves the keyboard where it is.
    updates = int(browser.execute_script("return Number(document.getElementById('panel').dataset.updates)"))
    api.pause_pipeline(served.runtime, tree["id"])
    wait_until(lambda: int(browser.execute_script("return Number(document.getElementById('panel').dataset.updates)"))
               > updates, 20, 0.05, what="the panel brought up to date")
    assert browser.execute_script("return document.activeElement.getAttribute('data-node-id')") == broken["id"]
    api.resume_pipeline(served.runtime, tree["id"])


def test_a_traceback_is_headed_by_its_exception(browser: Any, served: Any) -> None:  # noqa: F811
    tree = divide_tree(0, name="headline")
    assert api.run_pipeline(served.runtime, tree).result
    divide = node_id(tree, "divide")
    served.wait_state(divide, "FAILED")
    sign_in(browser, served, "viewer")
    browser.get(served.url + f"/#/p/{tree['id']}/n/{divide}")
    assert read(browser, "#ex-data-headline") == "ZeroDivisionError: division by zero"
    assert text(browser, "#ex-data-view").startswith("Traceback (most recent call last):")
    # Not a traceback (a component's own ex_data): shown as it is, without a headline.
    tree, fails = failed_payload(served)
    browser.get(served.url + f"/#/p/{tree['id']}/n/{fails}")
    wait_until(lambda: text(browser, "#panel-title") == PAYLOAD + " fails", 20, 0.05, what="the panel")
    assert text(browser, "#ex-data-view").startswith("failed on ")
    assert text(browser, "#ex-data-headline") == ""
