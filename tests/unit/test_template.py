"""``${...}`` templates: references, type-preserving sole references, splice rendering."""

from __future__ import annotations

import pytest

from culm.data import sandbox, template
from culm.data.template import references, render
from culm.errors import ExpressionLimitError

pytestmark = pytest.mark.timeout(30)

NS = {"a": "hello", "n": 3, "lst": [1, 2, 3], "d": {"x": {"y": [10, 20]}}, "csv": "p,q,r", "num": "41"}


def test_references_collect_loaded_names_only() -> None:
    assert references("${a + b[0]} and ${c.upper()}") == {"${a}", "${b}", "${c}"}
    assert references("${[x for x in items if x > lim]} ${int(v)} ${len(w)}") == {
        "${items}",
        "${lim}",
        "${v}",
        "${w}",
    }
    assert references({"k": ["${a}", ("${b}",)], "${c}": "plain"}) == {"${a}", "${b}"}
    assert references("${1 +} ${__import__('os')} $nothing {x}") == set()
    assert references(42) == set()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${a}", "hello"),
        ("${n}", 3),
        ("${lst}", [1, 2, 3]),
        ("${ n }", 3),
        ("x-${a}", "x-hello"),
        ('${"pre_" + a}', "pre_hello"),
        ("${'%s-%d' % (a, n)}", "hello-3"),
        ("${a[1:3]}", "el"),
        ("${a.upper()}", "HELLO"),
        ("${a.replace('l', 'L')}", "heLLo"),
        ("${'  x '.strip()}", "x"),
        ("${csv.split(',')[1]}", "q"),
        ("${a.count('l')}", "2"),
        ("${int(num) + 1}", "42"),
        ("${len(lst)} items", "3 items"),
        ("${[x * 2 for x in lst]}", "[2, 4, 6]"),
        ("${list(a)[0]}", "h"),
        ("${n * 2}${n}", "63"),
    ],
)
def test_documented_splice_operations(text: str, expected: object) -> None:
    assert render(text, NS) == expected


def test_failing_fragments_are_left_unchanged() -> None:
    assert render("${missing}", NS) == "${missing}"
    assert render("a ${missing + 1} b ${n}", NS) == "a ${missing + 1} b 3"
    assert render("${a + 1}", NS) == "${a + 1}"  # TypeError
    assert render("${1 +}", NS) == "${1 +}"  # syntax error
    assert render("${a.__class__}", NS) == "${a.__class__}"  # forbidden
    assert render("${}", NS) == "${}"


def test_render_recurses_into_containers_but_not_keys() -> None:
    value = {"${a}": ["${n}", ("${a}!", 5)], "k": {"deep": "${lst}"}}
    assert render(value, NS) == {"${a}": [3, ("hello!", 5)], "k": {"deep": [1, 2, 3]}}
    obj = object()
    assert render(obj, NS) is obj


def test_nested_object_lookup_is_opt_in() -> None:
    assert render("${d['x']['y'][1]}", NS, nested_objects=True) == 20
    assert render('${d["x"]["y"]}', NS, nested_objects=True) == [10, 20]
    assert render("${d['x']['y'][1]}", NS) == "20"
    assert render("${d['nope']}", NS, nested_objects=True) == "${d['nope']}"


class _Subscriptable:
    """A class a context may hold (pickled by reference): subscripting it runs its own code."""

    seen: list[object] = []

    def __class_getitem__(cls, key: object) -> object:
        cls.seen.append(key)
        return ("reached", key)


def test_nested_object_lookup_keeps_the_sandboxs_subscript_rules() -> None:
    """The nested-object path subscripted a class (running its __class_getitem__) and took
    double-underscore keys, both of which the sandbox refuses: such a fragment now stays text."""
    names = {"t": _Subscriptable, "cfg": {"__k": 1, "k": {"__j": 2}}}
    for fragment in ("${t['x']}", "${t[0]}", "${cfg['__k']}", "${cfg['k']['__j']}"):
        assert render(fragment, names, nested_objects=True) == fragment
        assert render(fragment, names) == fragment
    assert _Subscriptable.seen == []
    assert render("${cfg['k']}", names, nested_objects=True) == {"__j": 2}


def test_limit_errors_propagate() -> None:
    with pytest.raises(ExpressionLimitError):
        render("${9**9**9**9}", NS)
    with pytest.raises(ExpressionLimitError):
        render(["ok", {"k": "${'a' * 10**10}"}], NS)


def test_total_output_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template, "MAX_RENDER_OUTPUT", 100)
    with pytest.raises(ExpressionLimitError):
        render("${'a' * 60}${'b' * 60}", NS)


def test_deeply_nested_values_without_templates_are_returned() -> None:
    value: list = ["x"]
    for _ in range(template.MAX_RENDER_DEPTH + 50):
        value = [value]
    assert render(value, NS) == value
    value[0] = "${n}"
    deep: list = value
    for _ in range(template.MAX_RENDER_DEPTH + 50):
        deep = [deep]
    with pytest.raises(ExpressionLimitError):
        render(deep, NS)


def test_self_containing_list_does_not_hang() -> None:
    loop: list = ["${n}"]
    loop.append(loop)
    assert "${n}" in {s for s in template._strings(loop)}


def test_bare_name_fragments_render_like_expressions():
    ns = {"a": "x", "n": 41, "obj": {"k": [1, 2]}}
    assert render("${a}-${ a }-${n}", ns) == "x-x-41"
    assert render("${int(n) + 1}", ns) == "42"
    assert render("${obj}", ns) == {"k": [1, 2]}  # a sole fragment still yields the raw object
    assert render("v=${obj}", ns) == "v={'k': [1, 2]}"
    assert render("${missing}-${a}", ns) == "${missing}-x"  # unknown names stay as written
    assert render("${len}", ns) == render("x${len}", ns)[1:]  # builtins go through the sandbox


def test_long_templates_render_but_are_not_kept_in_the_caches():
    text = "${a}" + "-" * (template.MAX_CACHED_TEXT + 10) + "${a}"
    before = (len(template.COMPILED), len(template.REFERENCES))
    assert render(text, {"a": "z"}) == "z" + "-" * (template.MAX_CACHED_TEXT + 10) + "z"
    assert references(text) == {"${a}"}
    after = (len(template.COMPILED), len(template.REFERENCES))
    assert after == before


@pytest.mark.parametrize(("text", "expected"), [
    ("${(x * 2 for x in lst)}", "<generator object>"),
    ("sum: ${(x for x in lst)}!", "sum: <generator object>!"),
    ("${zip(lst, lst)}", "<zip object>"),
    ("${enumerate(lst)}", "<enumerate object>"),
    ("${reversed(lst)}", "<list_reverseiterator object>"),
    ("${[zip(lst), (x for x in lst)]}", "[<zip object>, <generator object>]"),
    ("${str(zip(lst))}", "<zip object>"),
    ("${'%r and %s' % ((x for x in lst), zip(lst))}", "<generator object> and <zip object>"),
    ("${range(3)}", "range(0, 3)"),  # a text of its own, kept
    ("${sum(x for x in lst)}", "6"),  # consumed: the value, as before
    ("${', '.join(str(x) for x in lst)}", "1, 2, 3"),
])
def test_a_lazy_iterator_renders_without_a_memory_address(text: str, expected: str) -> None:
    """CPython's text of a generator or zip holds its address (`<generator object ... at 0x7f...>`):
    it changed from run to run and told the worker's memory layout to whoever reads the outputs."""
    assert render(text, NS) == expected


def test_objects_from_the_context_render_without_a_memory_address() -> None:
    def helper() -> None: ...

    ns = {"gen": (x for x in [1]), "fn": helper, "obj": object()}
    assert render("${'%s' % (obj,)}", ns) == "<object object>"
    assert render("${gen} ${fn} ${obj}", ns) == (
        "<generator object> <function test_objects_from_the_context_render_without_a_memory_address.<locals>.helper> "
        "<object object>")
    assert render("plain text at 0x7f00> stays", ns) == "plain text at 0x7f00> stays"  # not an object's text
    assert render("${t}", {"t": "a str value <x object at 0x10> is kept"}) == "a str value <x object at 0x10> is kept"


class _NoText:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_a_value_that_cannot_become_text_leaves_its_fragment_as_written(monkeypatch):
    # A lazy variable's object whose __str__ raises, an int of more than 4,300 digits (a
    # component's output): the exception went out of the render, and the node failed with a
    # traceback of the engine's render code as its ex_data. An object's own __str__ runs only
    # where the deployment trusts the context's objects (refused otherwise: test_sandbox_operators).
    monkeypatch.setattr(sandbox, "TRUST_CONTEXT_OBJECTS", True)
    for value in (_NoText(), 10**5000):
        assert render("v=${x}!", {"x": value}) == "v=${x}!"
        assert render("${x}", {"x": value}) is value  # a fragment alone gives the value itself
