"""Gateway conditions in bamboo's boolrule syntax."""

from __future__ import annotations

import time

import pytest

from culm.data.boolrule import evaluate_condition, evaluate_gateway_condition
from culm.errors import ConditionSyntaxError, ExpressionError, ExpressionLimitError

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 == 1", True),
        ("1 != 1", False),
        ("2 > 1", True),
        ("2 < 1", False),
        ("2 >= 2", True),
        ("2 <= 1", False),
        ("1 in (1, 2)", True),
        ("3 notin (1, 2)", True),
        ("(1, 2, 3) issuperset (1, 2)", True),
        ("(1, 2) notissuperset (1, 3)", True),
        ("'b' in 'abc'", True),
        ("1 IN (1, 2) AND 2 NOTIN (3)", True),
        ("(1, 2) ISSUPERSET (2) Or 1 == 2", True),
    ],
)
def test_every_operator(expr: str, expected: bool) -> None:
    assert evaluate_condition(expr) is expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("-1 < 0", True),
        ("+2 == 2", True),
        ("1.5e1 == 15", True),  # int side converts the other to int
        ("-.5 < 0.25", True),
        ("-.5 < 0", False),  # the int side truncates -0.5 to 0
        ("1E3 == 1000", True),
        ("'single' == \"single\"", True),
        ("TRUE == 1", True),
        ("False == 0", True),
        ("abc == 'abc'", True),
        ("${x} == '${x}'", True),
        ("a.b.c == 'a.b.c'", True),
        ("_private == '_private'", True),
        ("'a\\nb' != 'a'", True),
    ],
)
def test_operands(expr: str, expected: bool) -> None:
    assert evaluate_condition(expr) is expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 == '1'", True),  # int side wins: '1' -> 1
        ("'1' == 1", True),
        ("1 == 1.9", True),  # 1.9 -> 1, as boolrule does
        ("1.5 == '1.5'", True),  # str side: 1.5 -> '1.5'
        ("'abc' == 1", False),  # int('abc') fails: compared as is
        ("'1' in (1, 2)", True),  # str copies of the list items are added
        ("2 in ('1', '2')", True),  # int copies are added
        ("2.0 in ('2.0', 3)", False),  # floats get no converted copies
        ("'abc' issuperset 'abc'", True),  # a string is one item, not its characters
        ("('a', 'b') issuperset 'a'", True),
        ("'ab' issuperset 'a'", False),
        ("true == 'True'", False),  # bool is an int; int('True') fails, so no str step either
    ],
)
def test_coercion(expr: str, expected: bool) -> None:
    assert evaluate_condition(expr) is expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 == 1 or 1 == 2", True),
        ("1 == 2 or 1 == 1", True),
        ("1 == 1 and 1 == 2", False),
        # strictly left to right, no precedence: an "or" after a true result ends it ...
        ("1 == 1 or 1 == 2 and 1 == 2", True),
        # ... and an "and" after a false result ends it, even before a later "or"
        ("1 == 2 and 1 == 1 or 1 == 1", False),
        ("1 == 2 or 1 == 1 and 1 == 2", False),
        ("(1 == 2 and 1 == 1) or 1 == 1", True),
        ("1 == 1 and (1 == 2 or 2 == 2)", True),
        ("((1 == 1))", True),
    ],
)
def test_left_to_right_and_parentheses(expr: str, expected: bool) -> None:
    assert evaluate_condition(expr) is expected


def test_short_circuit_skips_failing_comparisons() -> None:
    assert evaluate_condition("1 == 1 or 'a' < 1") is True
    with pytest.raises(ExpressionError, match="cannot be evaluated"):
        evaluate_condition("1 == 1 and 'a' < 1")


def test_match_all() -> None:
    assert evaluate_condition("*") is True


@pytest.mark.parametrize(
    "expr", ["", "1", "1 ==", "== 1", "1 === 1", "(1 == 1", "1 == 1 and", "a b", "1 ~ 2", "'a\nb' == 1"]
)
def test_syntax_errors_quote_the_expression(expr: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        evaluate_condition(expr)
    assert repr(expr)[:40] in str(info.value)
    assert "not valid condition syntax" in str(info.value)


def test_bounds() -> None:
    with pytest.raises(ExpressionLimitError):
        evaluate_condition("1 == 1 and " * 2000 + "1 == 1")
    with pytest.raises(ExpressionLimitError):
        evaluate_condition("(" * 60 + "1 == 1" + ")" * 60)
    with pytest.raises(ExpressionLimitError):
        evaluate_condition("1e99999 == 1")
    assert evaluate_condition("(" * 40 + "1 == 1" + ")" * 40) is True


def test_gateway_condition_renders_then_evaluates() -> None:
    ns = {"n": 5, "s": "line1\nline2\tend", "flag": "yes"}
    assert evaluate_gateway_condition("${n} > 3", ns) is True
    assert evaluate_gateway_condition("${n + 1} == 6 and '${flag}' == 'yes'", ns) is True
    assert evaluate_gateway_condition("'${s}' == 'line1\\nline2\\tend'", ns) is True
    assert evaluate_gateway_condition("${missing} == '${missing}'", ns) is True
    with pytest.raises(ExpressionLimitError):
        evaluate_gateway_condition("${9**9**9**9} == 1", ns)


def test_a_gateways_conditions_escape_only_the_values_they_name() -> None:
    """Found probing (session 23): each condition escaped every value of the gateway's namespace
    (the variables all its conditions name) before looking at its own text, and a condition
    without ``${`` renders nothing, so no clock was read. 900 conditions ``1 == 2`` in front of
    100 naming a variable of 1 MB of lines each held the engine for over ten minutes."""
    from culm.data import template

    namespace = {f"v{i}": "line\n" * 200_000 for i in range(20)}
    conditions = ["1 == 2"] * 1000 + ["'${v0[:4]}' == 'x'", "${len(v1)} > 0"]
    start = time.process_time()
    with template.output_bound(template.MAX_NODE_RENDER_OUTPUT):
        verdicts = [evaluate_gateway_condition(cond, namespace) for cond in conditions]
    spent = time.process_time() - start
    assert verdicts == [False] * 1001 + [True]
    assert spent < 3.0, f"1,002 conditions took {spent:.1f} s of CPU"
