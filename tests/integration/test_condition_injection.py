"""A variable's value cannot rewrite the gateway condition it is spliced into, on every runtime.

Found probing (session 14): a gateway condition is rendered as text, then parsed. A context value
``bob == bob or x`` (a form field, a component's output echoing its input) turned
``${name} == 'bob'`` into ``bob == bob or x == 'bob'``, which always holds, and
``x' == 'x' or 'y`` did the same to ``'${name}' == 'bob'``: the gateway took the branch meant for
bob, as SQL built by pasting text takes injected clauses. Now a fragment standing alone must render
to one operand, one inside quotes must not hold its quote character: otherwise the gateway fails
naming the variable, and an operator decides (skip_exclusive_gateway, retry with new data).
"""

from __future__ import annotations

import pytest
from engine_fixtures import finish, node_state, outputs, wait_state

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ServiceActivity,
    Var,
    build_tree,
)
from culm.data.boolrule import evaluate_gateway_condition
from culm.errors import ConditionSyntaxError

pytestmark = pytest.mark.timeout(120)


def gated(name: str, condition: str) -> tuple[dict, ExclusiveGateway, ServiceActivity, ServiceActivity]:
    start = EmptyStartEvent()
    gate = ExclusiveGateway(conditions={0: condition, 1: condition.replace("==", "!=")})
    privileged, other = ServiceActivity(component_code="t_none"), ServiceActivity(component_code="t_none")
    start.extend(gate).connect(privileged, other).to(gate).converge(ConvergeGateway()).extend(EmptyEndEvent())
    data = Data()
    data.inputs["${name}"] = Var(type=Var.PLAIN, value=name)
    return build_tree(start, data=data), gate, privileged, other


@pytest.mark.parametrize(("value", "condition", "why"), [
    ("bob == bob or x", "${name} == 'bob'", "is not one operand"),
    ("x' == 'x' or 'y", "'${name}' == 'bob'", "holds the quote ' that encloses it"),
    ('x" == "x" or "y', '"${name}" == "bob"', 'holds the quote " that encloses it'),
])
def test_a_value_rewriting_its_condition_fails_the_gateway_naming_it(runtime, value, condition, why):
    tree, gate, privileged, _other = gated(value, condition)
    api.run_pipeline(runtime, tree)
    wait_state(runtime, gate.id, "FAILED", timeout=60)
    ex = outputs(runtime, gate.id)["ex_data"]
    assert "the value of ${name}" in ex and why in ex, ex
    assert node_state(runtime, privileged.id) is None  # the branch was not taken

    for honest, taken in (("bob", 0), ("alice", 1)):  # the same gateway with plain values still routes
        tree, gate, privileged, other = gated(honest, condition)
        finish(runtime, tree, timeout=60)
        assert node_state(runtime, (privileged, other)[taken].id)["state"] == "FINISHED"
        assert node_state(runtime, (privileged, other)[1 - taken].id) is None


@pytest.mark.parametrize("value", ["bob", 7, "-1.5", "(1, 2)", "'bob'", '"say hi"', "a.b"])
def test_one_operand_values_still_render(value):
    assert evaluate_gateway_condition("${v} == ${v}", {"v": value}) is True
    assert evaluate_gateway_condition("'${v}' != ''", {"v": str(value).replace("'", "")}) is True


def test_a_quote_of_the_other_kind_is_text():
    assert evaluate_gateway_condition("'${v}' == 'say \"hi\"'", {"v": 'say "hi"'}) is True
    with pytest.raises(ConditionSyntaxError, match=r"the value of \$\{v\} \('1 == 1\) or \(1'\) is not one operand"):
        evaluate_gateway_condition("(${v} == 2)", {"v": "1 == 1) or (1"})


@pytest.mark.parametrize(("value", "holds"), [("1 == 1", True), ("2 == 3 or 3 in (3, 4)", True),
                                              ("'a' == 'b'", False)])
def test_a_condition_that_is_one_variable_alone_reads_its_value_as_the_condition(value, holds):
    # bamboo renders the text and then parses it: an author who gave a variable the whole
    # condition chose to let its value be the condition, so it is not an injection.
    assert evaluate_gateway_condition("${cond}", {"cond": value}) is holds
    assert evaluate_gateway_condition("  ${cond} ", {"cond": value}) is holds
    with pytest.raises(ConditionSyntaxError, match="is not one operand"):
        evaluate_gateway_condition("${cond} and 1 == 1", {"cond": value})
