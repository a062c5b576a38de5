"""Evaluations are remembered by expression, limits and the values of the names they read; a
remembered result must never stand in for an evaluation that would give something else."""

from __future__ import annotations

import dataclasses

import pytest

from culm.data import sandbox
from culm.errors import ExpressionError, ExpressionLimitError


@pytest.fixture(autouse=True)
def _empty_memo():
    sandbox._memo.clear()
    yield
    sandbox._memo.clear()


def test_each_value_of_a_name_gets_its_own_result():
    assert [sandbox.evaluate("int(n) + 1", {"n": str(i)}) for i in range(5)] == [1, 2, 3, 4, 5]
    assert sandbox.evaluate("int(n) + 1", {"n": "0"}) == 1


def test_values_that_compare_equal_but_differ_in_type_do_not_share_a_result():
    assert sandbox.evaluate("str(n) + '!'", {"n": 1}) == "1!"
    assert sandbox.evaluate("str(n) + '!'", {"n": True}) == "True!"
    assert sandbox.evaluate("str(n) + '!'", {"n": "1"}) == "1!"


def test_floats_are_not_remembered_by_value():
    assert sandbox.evaluate("str(x)", {"x": -0.0}) == "-0.0"
    assert sandbox.evaluate("str(x)", {"x": 0.0}) == "0.0"


def test_a_value_that_shadows_a_builtin_is_part_of_the_key():
    assert sandbox.evaluate("int(n)", {"n": "7"}) == 7
    with pytest.raises(ExpressionError):
        sandbox.evaluate("int(n)", {"n": "7", "int": 5})


def test_names_bound_inside_a_comprehension_do_not_mix_with_outer_values():
    expr = "[x * k for x in range(3)][-1]"
    assert sandbox.evaluate(expr, {"k": 2}) == 4
    assert sandbox.evaluate(expr, {"k": 2, "x": 100}) == 4
    assert sandbox.evaluate(expr, {"k": 3}) == 6


def test_tighter_limits_are_not_bypassed_by_a_remembered_result():
    assert sandbox.evaluate("10 ** n", {"n": 40}) == 10**40
    tight = dataclasses.replace(sandbox.Limits.current(), max_int_digits=10)
    with pytest.raises(ExpressionLimitError):
        sandbox.evaluate("10 ** n", {"n": 40}, limits=tight)


def test_mutable_results_are_fresh_each_time():
    first = sandbox.evaluate("[n, n]", {"n": 1})
    first.append("changed")
    assert sandbox.evaluate("[n, n]", {"n": 1}) == [1, 1]


def test_containers_among_the_names_are_read_each_time():
    items = [1, 2]
    assert sandbox.evaluate("len(v)", {"v": items}) == 2
    items.append(3)
    assert sandbox.evaluate("len(v)", {"v": items}) == 3


def test_failures_are_not_remembered():
    with pytest.raises(ExpressionError):
        sandbox.evaluate("int(n)", {"n": "x"})
    assert sandbox.evaluate("int(n)", {"n": "4"}) == 4
    with pytest.raises(ExpressionError):
        sandbox.evaluate("int(n)", {"n": "x"})


def test_the_memo_stays_bounded():
    for i in range(sandbox.MEMO_SIZE + 10):
        sandbox.evaluate("n + 1", {"n": i})
    assert len(sandbox._memo) <= sandbox.MEMO_SIZE
    assert sandbox.evaluate("n + 1", {"n": 3}) == 4


def test_large_values_are_evaluated_but_not_remembered():
    big = "x" * (sandbox.MEMO_MAX_TEXT + 1)
    assert sandbox.evaluate("len(v)", {"v": big}) == len(big)
    long_expr = "n + len('" + "y" * sandbox.MEMO_MAX_TEXT + "')"
    assert sandbox.evaluate(long_expr, {"n": 1}) == 1 + sandbox.MEMO_MAX_TEXT
    assert sandbox._memo == {}


def test_large_results_are_not_remembered():
    assert sandbox.evaluate("v * 2000", {"v": "ab"}) == "ab" * 2000
    assert sandbox.evaluate("10 ** n", {"n": 3000}) == 10**3000
    assert sandbox._memo == {}
