"""Retrying a failed node with new inputs from the console, and the console on odd data: one typed
field per input instead of raw JSON, a wrong value named and never sent, what would change shown
before it is sent; names without spaces that wrap instead of widening the page; the graph by
keyboard (headless Chromium, as ``test_web_console.py``)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support import wait_until
from test_web_console import browser, sign_in  # noqa: F401 - fixture
from web_support import click, find, served, text  # noqa: F401 - fixture

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

pytestmark = pytest.mark.timeout(300)


def order_tree(name: str, act_name: str = "take order") -> tuple[dict, str]:
    start = EmptyStartEvent(name="start")
    act = ServiceActivity(component_code="web_order", name=act_name)
    act.component.inputs.amount = Var(type=Var.PLAIN, value=250)
    act.component.inputs.note = Var(type=Var.PLAIN, value="héllo wörld")
    act.component.inputs.express = Var(type=Var.PLAIN, value=True)
    act.component.inputs.tags = Var(type=Var.PLAIN, value=["a", 1])
    start.extend(act).extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}")
    tree["name"] = name
    return tree, act.id


def open_retry_form(browser: Any, served: Any, name: str) -> str:  # noqa: F811
    """Run an order that fails, and open its node's retry form as an operator; the node's id."""
    tree, act = order_tree(name)
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(act, "FAILED")
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{act}")
    click(browser, '#node-actions button[data-action="retry"]')
    return act


def changes_say(browser: Any, fragment: str) -> None:  # noqa: F811
    wait_until(
        lambda: fragment in text(browser, "#retry-changes"), 10, 0.05, what=f"the form to say {fragment!r}"
    )


def field(driver: Any, key: str) -> Any:
    return find(driver, f'#retry-fields [data-key="{key}"]')


def test_retry_form_has_a_typed_field_per_input_and_sends_only_what_it_can_read(
    browser: Any,  # noqa: F811
    served: Any,  # noqa: F811
) -> None:
    act = open_retry_form(browser, served, "retry-typed")
    kinds = {k: field(browser, k).get_attribute("data-kind") for k in ("amount", "note", "express", "tags")}
    assert kinds == {"amount": "number", "note": "text", "express": "boolean", "tags": "json"}
    assert field(browser, "note").get_attribute("value") == "héllo wörld"  # text as text, not a JSON string
    assert "No change" in text(browser, "#retry-changes")
    amount = field(browser, "amount")
    assert (
        browser.execute_script("return document.activeElement.dataset.key") == "amount"
    )  # focus in the form
    amount.clear()
    amount.send_keys("80 dollars")
    changes_say(browser, 'amount: expected a number, not "80 dollars"')
    click(browser, "#action-submit")  # refused in the page: nothing is sent
    wait_until(lambda: "expected a number" in text(browser, "#toast"), 10, 0.05, what="the refusal")
    assert served.state(act) == "FAILED"
    assert api.get_node_histories(served.runtime, act).data == []  # not retried
    amount.clear()
    amount.send_keys("80")
    field(browser, "note").send_keys(" !")
    changes_say(browser, 'Changes: amount: 250 → 80; note: "héllo wörld" → "héllo wörld !"')
    click(browser, "#action-submit")
    served.wait_state(act, "FINISHED")
    # Every input sent with its own type: the number a number, the untouched ones as they were.
    assert api.get_execution_data_outputs(served.runtime, act).data["got"] == {
        "amount": 80,
        "note": "héllo wörld !",
        "express": True,
        "tags": ["a", 1],
    }


def test_retry_form_as_json_checks_the_object_and_unchanged_retries_as_is(
    browser: Any,  # noqa: F811
    served: Any,  # noqa: F811
) -> None:
    act = open_retry_form(browser, served, "retry-json")
    click(browser, "#retry-as-json")
    area = find(browser, "#retry-inputs")
    area.clear()
    area.send_keys("[1, 2]")
    changes_say(browser, "must be one JSON object")
    click(browser, "#retry-as-json")  # cannot go back to fields from text that is not an object
    assert find(browser, "#retry-as-json").is_selected()
    area.clear()
    area.send_keys('{"amount": 7, "note": "n", "express": false, "tags": []}')
    click(browser, "#retry-as-json")  # back to fields, rebuilt from the object
    assert field(browser, "amount").get_attribute("value") == "7"
    assert field(browser, "express").get_attribute("value") == "false"
    click(browser, "#action-cancel")  # Cancel closes the form, nothing sent
    assert served.state(act) == "FAILED"
    # Unchanged, Retry sends no inputs: the node runs again with its own (and fails again).
    click(browser, '#node-actions button[data-action="retry"]')
    assert "No change" in text(browser, "#retry-changes")
    click(browser, "#action-submit")
    wait_until(
        lambda: len(api.get_node_histories(served.runtime, act).data) == 1 and served.state(act) == "FAILED",
        30,
        0.05,
        what="a second failed run",
    )
    inputs = api.get_execution_data_inputs(served.runtime, act).data
    assert inputs["amount"] == 250 and inputs["tags"] == ["a", 1]


def test_long_unbroken_names_wrap_and_the_graph_works_by_keyboard(browser: Any, served: Any) -> None:  # noqa: F811
    tree, act = order_tree("ñ" * 400, act_name="x" * 300)
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(act, "FAILED")
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/?name=" + "ñ" * 20)
    find(browser, f'#pipelines tr[data-id="{tree["id"]}"]')
    wide = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert browser.execute_script(wide) <= 0  # no sideways scrolling of the list
    browser.get(f"{served.url}/#/p/{tree['id']}")
    node = find(browser, f'#graph .node[data-node-id="{act}"]')
    assert browser.execute_script(wide) <= 0  # the title wraps
    assert node.get_attribute("tabindex") == "0" and "FAILED" in node.get_attribute("aria-label")
    browser.execute_script("arguments[0].focus()", node)
    from selenium.webdriver.common.keys import Keys

    node.send_keys(Keys.ENTER)
    wait_until(lambda: text(browser, "#panel-title") == "x" * 300, 10, 0.05, what="the panel opened by Enter")
    assert browser.execute_script(wide) <= 0
    click(browser, '#node-actions button[data-action="retry"]')
    find(browser, "#retry-fields")
    field(browser, "amount").send_keys(Keys.ESCAPE)  # Escape closes the form, focus back on its button
    wait_until(
        lambda: not browser.find_elements("css selector", "#action-form"), 10, 0.05, what="the form closed"
    )
    assert browser.execute_script("return document.activeElement.dataset.action") == "retry"


def open_templated_retry(browser: Any, served: Any, express: Var, tags: Var) -> str:  # noqa: F811
    """An order whose ``note`` is written ``${customer}-note``, run with customer "ann" until it
    fails, the context then changed to "bob"; its retry form opened as an operator. The node's id."""
    start = EmptyStartEvent(name="start")
    act = ServiceActivity(component_code="web_order", name="take order")
    act.component.inputs.amount = Var(type=Var.PLAIN, value=250)
    act.component.inputs.note = Var(type=Var.SPLICE, value="${customer}-note")
    act.component.inputs.express = express
    act.component.inputs.tags = tags
    start.extend(act).extend(EmptyEndEvent(name="end"))
    tree = build_tree(start, id=f"p{uuid.uuid4().hex}", data={"inputs": {
        "${customer}": {"type": "plain", "value": "ann"}, "${rush}": {"type": "plain", "value": True}}, "outputs": {}})
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(act.id, "FAILED")
    assert api.update_context_values(served.runtime, tree["id"], {"${customer}": "bob"}).result
    sign_in(browser, served, "operator")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/{act.id}")
    click(browser, '#node-actions button[data-action="retry"]')
    return act.id


def retried_got(browser: Any, served: Any, act: str) -> dict:  # noqa: F811
    """Send the retry form; once the order finishes, the inputs it got."""
    click(browser, "#action-submit")
    served.wait_state(act, "FINISHED")
    return api.get_execution_data_outputs(served.runtime, act).data["got"]


def test_retry_form_sends_templates_as_written_unless_their_field_changed(
    browser: Any,  # noqa: F811
    served: Any,  # noqa: F811
) -> None:
    """Last round: once any input changed, a `${...}` input was sent as the value it rendered to
    (frozen: a later change of the context no longer reached it). Now an input left as it was is
    sent as the tree wrote it; a plain value holding `${` stays verbatim; a field changed is sent as typed."""
    act = open_templated_retry(browser, served, Var(type=Var.SPLICE, value="${rush}"),
                               Var(type=Var.PLAIN, value=["${customer}"]))
    assert field(browser, "note").get_attribute("value") == "ann-note"  # what the last run had
    assert "${customer}-note" in text(browser, "#retry-fields")  # and what it is written as
    # A pipeline without a name: its head showed "null" after its id (the trial's screenshot).
    assert "null" not in text(browser, ".pipeline-head"), text(browser, ".pipeline-head")
    # A field that cannot be read keeps the form as fields, the edit kept.
    amount = field(browser, "amount")
    amount.clear()
    amount.send_keys("80 dollars")
    click(browser, "#retry-as-json")
    changes_say(browser, "expected a number")
    assert not find(browser, "#retry-as-json").is_selected()
    assert field(browser, "amount").get_attribute("value") == "80 dollars"
    amount.clear()
    amount.send_keys("80")
    changes_say(browser, "amount: 250 → 80")
    got = retried_got(browser, served, act)
    # The template rendered anew against today's context; the plain list verbatim.
    assert got == {"amount": 80, "note": "bob-note", "express": True, "tags": ["${customer}"]}
    raw = api.get_data(served.runtime, act).data["inputs"]
    assert raw["note"] == {"need_render": True, "value": "${customer}-note"}
    assert raw["tags"] == {"need_render": False, "value": ["${customer}"]}
    assert raw["amount"]["value"] == 80


def test_retry_form_as_json_sends_untouched_templates_as_written(
    browser: Any,  # noqa: F811
    served: Any,  # noqa: F811
) -> None:
    """The same through the JSON box: a key whose value is left as rendered goes as written; one
    edited goes as typed."""
    act = open_templated_retry(browser, served, Var(type=Var.PLAIN, value=False), Var(type=Var.SPLICE, value="${customer}"))
    click(browser, "#retry-as-json")
    area = find(browser, "#retry-inputs")
    area.clear()
    area.send_keys('{"amount": 5, "note": "ann-note", "express": false, "tags": "typed"}')
    changes_say(browser, "amount: 250 → 5")
    got = retried_got(browser, served, act)
    assert got == {"amount": 5, "note": "bob-note", "express": False, "tags": "typed"}


def test_an_unknown_pipeline_is_said_once(browser: Any, served: Any) -> None:  # noqa: F811
    """A new user's trial: "Cannot show pipeline ghost: pipeline ghost does not exist ..."."""
    sign_in(browser, served, "viewer")
    browser.get(f"{served.url}/#/p/ghost_{uuid.uuid4().hex[:6]}")
    try:
        wait_until(lambda: "ghost_" in text(browser, "#page-error"), 20, 0.05, what="the page's error")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page says {text(browser, 'body')[:300]!r}") from None
    said = text(browser, "#page-error")
    # The server's reason, capitalised: "No pipeline with id ghost_..." (not after "Cannot show pipeline ghost_...: ")
    assert said.startswith(("No pipeline with id ghost_", "Pipeline ghost_")) and said.count("ghost_") == 1, said


def test_a_link_to_a_node_the_pipeline_does_not_have_says_so(browser: Any, served: Any) -> None:  # noqa: F811
    """A new user's trial: /#/p/PIPELINE/n/MISTYPED showed a panel as if for a node: type Pipeline,
    state "not reached", empty inputs and outputs and a made-up definition."""
    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    tree = build_tree(start)
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(tree["id"], "FINISHED", 60)
    sign_in(browser, served, "viewer")
    browser.get(f"{served.url}/#/p/{tree['id']}/n/mistyped_node")
    wait_until(lambda: "mistyped_node" in text(browser, "#node-problem"), 20, 0.05, what="the panel's note")
    assert text(browser, "#node-problem").startswith("This pipeline has no node mistyped_node"), \
        text(browser, "#node-problem")
    assert text(browser, "#panel-title") == "mistyped_node"
    assert text(browser, "#inputs-view") == "" and text(browser, "#panel-state") == ""
