"""A ``defaultdict`` (or a ``Counter``) in a context (found probing, session 22).

``collections`` types pass as containers, but a defaultdict indexed by a key it does not hold calls
its ``default_factory`` and adds the key: ``${d['x']}``, ``${cfg['x']}`` read as a nested object,
``'%(x)s' % d`` and ``'{x}'.format_map(d)`` ran a component's function or class and changed the
context's value (an evaluation is assumed never to change one); and its text writes the factory's
repr, a Counter's sorts its counts: a user's ``__repr__`` or ``__lt__`` ran.
"""

from __future__ import annotations

import collections
import types
from typing import Any

import pytest

from culm.data import sandbox, template
from culm.errors import ExpressionError, ExpressionRefusedError

RAN: list[str] = []


def factory() -> str:
    RAN.append("factory")
    return "made"


def _recorded(name: str, answer: Any) -> Any:
    """A method that records its name in RAN when it runs."""

    def method(self: Any, *args: Any) -> Any:
        RAN.append(name)
        return answer

    return method


Made = type("Made", (), {"__init__": _recorded("Made", None)})
# a factory that writes its own repr (a defaultdict's text writes it), a count that orders itself
Callable = type("Callable", (), {"__call__": _recorded("call", 1), "__repr__": _recorded("__repr__", "Callable()")})
Count = type("Count", (), {"__lt__": _recorded("__lt__", True), "__gt__": _recorded("__gt__", True)})


def names() -> dict[str, Any]:
    return {"d": collections.defaultdict(factory, {"a": 1}), "cls": collections.defaultdict(Made, {"a": 1}),
            "lists": collections.defaultdict(list, {"a": [1]}), "ints": collections.defaultdict(int),
            "bare": collections.defaultdict(None, {"a": 1}), "shown": collections.defaultdict(Callable(), {"a": 1}),
            "counts": collections.Counter({"a": Count(), "b": Count()})}


@pytest.mark.parametrize(("expr", "error", "match"), [
    ("d['x']", ExpressionRefusedError, "default_factory"), ("cls['x']", ExpressionRefusedError, "default_factory"),
    ("[d[k] for k in ['x', 'y']]", ExpressionRefusedError, "default_factory"),
    ("d['x'] if True else 0", ExpressionRefusedError, "default_factory"),
    # formatting looks keys up in C: a missing one fails as for a dict, the factory never called
    ("'%(x)s' % d", ExpressionError, "KeyError"), ("'{x}'.format_map(d)", ExpressionError, "KeyError"),
    ("'%(x)s' % cls", ExpressionError, "KeyError"), ("'{x}'.format_map(lists)", ExpressionError, "KeyError"),
])  # fmt: skip
def test_a_missing_key_never_calls_a_components_factory(expr: str, error: type[Exception], match: str) -> None:
    RAN.clear()
    ns = names()
    with pytest.raises(error, match=match):
        sandbox.evaluate(expr, ns)
    assert RAN == [] and list(ns["d"]) == ["a"] and list(ns["cls"]) == ["a"] and list(ns["lists"]) == ["a"]
    assert sandbox.evaluate("'%(a)s' % d + '{a}'.format_map(d)", ns) == "11"


def test_a_built_in_factory_gives_its_empty_value_without_adding_the_key() -> None:
    ns = names()
    assert sandbox.evaluate("[lists['x'], ints['x'], lists['a'], d['a'], d.get('x'), 'x' in d]", ns) == [
        [], 0, [1], 1, None, False]
    assert list(ns["lists"]) == ["a"] and list(ns["ints"]) == []
    with pytest.raises(ExpressionError, match="KeyError"):
        sandbox.evaluate("bare['x']", ns)


def test_templates_and_nested_objects_do_not_call_the_factory() -> None:
    RAN.clear()
    ns = names()
    assert template.render("a ${d['a']}", ns) == "a 1"
    with pytest.raises(ExpressionRefusedError, match="default_factory"):
        template.render("${d['x']}", ns, nested_objects=True)
    with pytest.raises(ExpressionRefusedError, match="default_factory"):
        template.render("at ${cls['x']}", ns)
    assert template.render("${lists['x']}", ns, nested_objects=True) == []
    assert template.render("${d['a']}", ns, nested_objects=True) == 1
    assert RAN == [] and list(ns["d"]) == ["a"] and list(ns["lists"]) == ["a"]


@pytest.mark.parametrize("expr", ["str(shown)", "str([shown])", "f'{shown}'", "'%s' % (shown,)", "str(counts)",
                                  "f'{[counts]}'"])
def test_the_text_of_a_defaultdict_or_counter_runs_no_users_code(expr: str) -> None:
    RAN.clear()
    with pytest.raises(ExpressionRefusedError):
        sandbox.evaluate(expr, names())
    assert RAN == []


def test_the_text_of_plain_ones_is_written() -> None:
    ns = {"d": collections.defaultdict(list, {"a": [1]}), "c": collections.Counter("aab")}
    assert sandbox.evaluate("str(d) + ' ' + str(c)", ns) == "defaultdict(<class 'list'>, {'a': [1]}) Counter({'a': 2, 'b': 1})"


def wrapped() -> tuple[collections.defaultdict[str, Any], dict[str, Any]]:
    inner = collections.defaultdict(factory, {"a": 1})
    return inner, {"cm": collections.ChainMap(inner, {"b": 2}), "late": collections.ChainMap({"b": 2}, inner),
                   "px": types.MappingProxyType(inner), "plain": collections.ChainMap({"a": 1}, {"b": 2})}


@pytest.mark.parametrize("expr", [
    "cm['x']", "cm['b']", "late['x']", "'%(x)s' % cm", "'{b}'.format_map(cm)", "cm == cm", "cm == {'a': 1, 'b': 2}",
    "dict(cm)", "[cm[k] for k in cm]", "px['x']", "'{x}'.format_map(px)", "'%(x)s' % px",
])  # fmt: skip
def test_a_chainmap_or_proxy_over_a_defaultdict_never_calls_its_factory(expr: str) -> None:
    """A ChainMap looks a key up in each map in turn (``cm['b']`` asks the defaultdict first, its
    ``==`` every key); a mapping proxy indexes the mapping it shows."""
    RAN.clear()
    inner, ns = wrapped()
    with pytest.raises(ExpressionError):
        sandbox.evaluate(expr, ns)
    assert RAN == [] and list(inner) == ["a"]
    for text in ("${cm['x']}", "${px['x']}"):
        with pytest.raises(ExpressionError):
            template.render(text, ns, nested_objects=True)
    assert RAN == [] and list(inner) == ["a"]
    assert sandbox.evaluate("[px['a'], plain['b'], plain == {'a': 1, 'b': 2}, list(px)]", ns) == [1, 2, True, ["a"]]
