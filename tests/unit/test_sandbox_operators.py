"""Operators of objects in the context: splicing, comparing, hashing, adding or testing an object
whose class wrote those operators runs its own code, refused for an untrusted template; value
types keep working (docs/data-and-variables.md, "Objects in the context")."""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import datetime
import decimal
import enum
import fractions
import uuid

import pytest

from culm.data import sandbox
from culm.data.boolrule import evaluate_gateway_condition
from culm.data.sandbox import evaluate
from culm.data.template import render
from culm.errors import ExpressionError, ExpressionLimitError, ExpressionRefusedError

RAN: list[str] = []


class Session:
    """A client whose operators reach out (a __str__ that logs in, an __eq__ that queries)."""

    def __init__(self) -> None:
        self.url = "http://svc"

    def __str__(self) -> str:
        RAN.append("str")
        return "session"

    def __format__(self, spec: str) -> str:
        RAN.append("format")
        return "session"

    def __eq__(self, other: object) -> bool:
        RAN.append("eq")
        return False

    def __lt__(self, other: object) -> bool:
        RAN.append("lt")
        return False

    def __hash__(self) -> int:
        RAN.append("hash")
        return 1

    def __add__(self, other: object) -> str:
        RAN.append("add")
        return "x"

    __radd__ = __add__

    def __neg__(self) -> str:
        RAN.append("neg")
        return "x"

    def __bool__(self) -> bool:
        RAN.append("bool")
        return True

    def __index__(self) -> int:
        RAN.append("index")
        return 0


class Reprs:
    def __repr__(self) -> str:
        RAN.append("repr")
        return "Reprs()"


class Plain:
    def __init__(self) -> None:
        self.name = "p"


@dataclasses.dataclass(frozen=True)
class Row:
    id: int
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class Holder:
    inner: object


class Color(enum.Enum):
    RED = "r"


Point = collections.namedtuple("Point", "x y")
S = Session()
NAMES = {
    "s": S, "r": Reprs(), "p": Plain(), "row": Row(1, ("a",)), "row2": Row(1, ("a",)), "holder": Holder(S),
    "color": Color.RED, "point": Point(1, 2), "when": datetime.datetime(2024, 5, 6, tzinfo=datetime.UTC),
    "day": datetime.timedelta(days=1), "price": decimal.Decimal("1.50"), "half": fractions.Fraction(1, 2),
    "uid": uuid.UUID(int=7), "d": {"k": 1}, "items": [1, S],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _nothing_ran():
    RAN.clear()
    yield


@pytest.mark.parametrize(
    ("expr", "refusal"),
    [
        ("s == 1", "__eq__"), ("1 == s", "__eq__"), ("s != None", "__eq__"), ("s < 1", "__eq__"),
        ("s in [1, 2]", "__eq__"), ("1 in items", "__eq__"), ("[s] == [s]", "__eq__"),
        ("s + 1", "__add__"), ("1 + s", "__add__"), ("-s", "__neg__"), ("sum([s])", "__add__"),
        ("{s}", "__hash__"), ("{s: 1}", "__hash__"), ("d[s]", "__hash__"), ("set(items)", "__hash__"),
        ("str(s)", "__str__"), ("str(r)", "__repr__"), ("str([r])", "__repr__"), ("f'{s}'", "__str__"),
        ("f'{s!r}'", "__str__"), ("'%s' % s", "__index__"), ("'%s' % (s,)", "__str__"),
        ("'{}'.format(s)", "__str__"), ("'{x}'.format(x=[s])", "__str__"), ("sorted([s, s])", "__eq__"),
        ("max(items)", "__eq__"), ("not s", "__bool__"), ("s or 1", "__bool__"), ("1 if s else 2", "__bool__"),
        ("any([s])", "__bool__"), ("[1].count(s)", "__eq__"), ("d.get(s)", "__eq__"), ("range(s)", "__index__"),
        ("[0][s]", "indexing by"), ("[0][s:]", "indexing by"), ("str(holder)", "__str__"), ("holder == holder", "__eq__"),
    ],
)
def test_an_objects_own_operators_are_refused_naming_them(expr: str, refusal: str) -> None:
    with pytest.raises(ExpressionRefusedError, match=refusal) as info:
        evaluate(expr, NAMES)
    assert repr(expr)[1:-1] in str(info.value) and "TRUST_CONTEXT_OBJECTS" in str(info.value)
    assert RAN == []


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("s is None", False), ("s is s", True), ("s.url", "http://svc"), ("row == row2", True),
        ("str(row)", "Row(id=1, tags=('a',))"), ("{row: 1}[row2]", 1), ("str(color)", "Color.RED"),
        ("color == color", True), ("f'{point}'", "Point(x=1, y=2)"), ("str(p).startswith('<')", True),
        ("p == p", True), ("bool(p)", True), ("(when + day).isoformat()", "2024-05-07T00:00:00+00:00"),
        ("when < when + day", True), ("str(price * 2)", "3.00"), ("f'{price:.1f}'", "1.5"),
        ("str(half + 1)", "3/2"), ("str(uid)[-2:]", "07"), ("{uid: 1}[uid]", 1), ("sorted([when, when])[0] == when", True),
    ],
)
def test_value_types_dataclasses_enums_and_plain_objects_keep_their_operators(expr: str, expected: object) -> None:
    assert evaluate(expr, NAMES) == expected
    assert RAN == []


def test_splicing_an_object_with_its_own_text_fails_the_render() -> None:
    with pytest.raises(ExpressionRefusedError, match=r"__str__ is its own code"):
        render("token: ${s}", NAMES)
    with pytest.raises(ExpressionRefusedError, match=r"__repr__"):
        render("${[r]} and more", NAMES)
    assert render("${row} ${point} ${color}", NAMES) == "Row(id=1, tags=('a',)) Point(x=1, y=2) Color.RED"
    assert render("${p}", NAMES) is NAMES["p"]  # a sole fragment hands the object itself over
    assert RAN == []


def test_a_gateway_condition_does_not_run_an_objects_operators() -> None:
    for condition in ("${s} == 'session'", "${s == 'session'}", "${not s} == True", "${s}"):
        with pytest.raises(ExpressionRefusedError):
            evaluate_gateway_condition(condition, NAMES)
    assert evaluate_gateway_condition("${row.id} == 1", NAMES)
    assert RAN == []


def test_a_trusted_deployment_runs_the_objects_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "TRUST_CONTEXT_OBJECTS", True)
    assert evaluate("[s == 1, s + 1, str(s), not s]", NAMES) == [False, "x", "session", False]
    assert render("${s}!", NAMES) == "session!"
    assert RAN == ["eq", "add", "str", "bool", "str"]


def test_a_value_holding_itself_is_refused_at_once() -> None:
    """A cyclic list or dict (a component's output) is refused when it is measured, not after the
    measure has counted its way to the size limit (it took the whole 0.5 s time limit)."""
    loop: list[object] = []
    loop.append(loop)
    mapping: dict[str, object] = {}
    mapping["self"] = [1, mapping]
    for text, names in (("x ${a}", {"a": loop}), ("${str(m)}", {"m": mapping}), ("${[a]}", {"a": loop})):
        with pytest.raises(ExpressionLimitError, match="holds itself"):
            render(text, names)
    shared = [1, 2]
    assert render("${x}!", {"x": [shared, shared, [shared]]}) == "[[1, 2], [1, 2], [[1, 2]]]!"


@pytest.mark.parametrize("expr", ["{}[r]", "d[r]", "d[r, 1]", "{}[(r,)]", "[1].index(r)", "{}[p]"])
def test_an_error_message_never_runs_an_objects_repr(expr: str) -> None:
    """A KeyError or ValueError names its key: its text was the object's own ``__repr__`` (run by
    the message, and its text, a token say, written into the node's ex_data) or a memory address."""
    with pytest.raises(ExpressionError) as info:
        evaluate(expr, {**NAMES, "d": {}})
    assert RAN == []
    assert "Reprs()" not in str(info.value) and " at 0x" not in str(info.value), info.value


class Count:
    """An object Python takes a number from: a count, a width, a %d."""

    def __index__(self) -> int:
        RAN.append("index")
        return 2

    def __int__(self) -> int:
        RAN.append("int")
        return 2

    def __float__(self) -> float:
        RAN.append("float")
        return 2.0


@pytest.mark.parametrize(
    "expr",
    ["'a' * c", "[1] * c", "'a'.center(c)", "'a,b'.split(',', c)", "'%d' % c", "'%f' % (c,)", "'%x' % c",
     "round(1.5, c)", "(1, 2, 3).index(1, c)", "enumerate([1], c)", "'abc'[c]", "'%*d' % (c, 1)"],
)
def test_a_number_taken_from_an_object_is_refused(expr: str) -> None:
    with pytest.raises(ExpressionRefusedError, match="Count"):
        evaluate(expr, {"c": Count()})
    assert RAN == []


class Level(enum.IntEnum):
    LOW = 1


class Mode(enum.IntFlag):
    R = 1
    W = 2


class Word(enum.StrEnum):
    YES = "yes"


def test_int_and_str_enums_splice_compare_and_format() -> None:
    """Python 3.11's enum copies int.__format__ and str.__str__ into an IntEnum's, IntFlag's and
    StrEnum's own class as built-in slots: they are the built-in type's code, not the class's."""
    import http

    names = {"ie": Level.LOW, "flag": Mode.R | Mode.W, "word": Word.YES, "status": http.HTTPStatus.OK}
    assert render("x${ie}", names) == "x1"
    assert render("${word}!", names) == "yes!"
    assert render("${status}", names) is http.HTTPStatus.OK and render("x${status}", names) == "x200"
    assert evaluate("f'{flag}'", names) == "3"
    assert evaluate("[ie == 1, word == 'yes', flag & 1, str(word), ie + 1]", names) == [True, True, 1, "yes", 2]
    assert evaluate_gateway_condition("${ie} == 1", names)
    assert evaluate_gateway_condition("${flag} == 3", names)


def test_comparing_and_testing_membership_in_large_results_stays_fast() -> None:
    """The operator walk visits each container once per evaluation, a dict's ``in`` walks its keys
    only, and a value compared to None or a str is not walked: these ran past the 0.5 s limit."""
    rows = [{"id": i, "name": f"n{i}", "tags": ["a", "b"]} for i in range(60000)]
    names = {"res": {"rows": rows, "total": len(rows)}, "ids": list(range(50))}
    assert render("${[i for i in ids if 'rows' in res]}", names) == str(list(range(50)))
    assert render("${[i for i in ids if res['rows'] != None]}", names) == str(list(range(50)))
    assert evaluate("[res != None, res == res, 'k' in res, res == 'x']", names) == [True, True, False, False]
    assert evaluate("[res['rows'][:3] == res['rows'][:3] for i in ids][0]", names) is True
    with pytest.raises(ExpressionRefusedError, match="__eq__"):
        evaluate("[1, s] == [1, 2]", NAMES)
    with pytest.raises(ExpressionRefusedError, match="__eq__"):
        evaluate("s in {1: 2}", NAMES)
    keyed = {S: 1}
    RAN.clear()
    with pytest.raises(ExpressionRefusedError, match="__eq__"):
        evaluate("1 in keyed", {"keyed": keyed})
    assert RAN == []


def test_splicing_a_large_tree_does_not_look_for_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cycle walk (a second pass over the value) runs only once measuring meets a container
    twice: a large result of distinct rows is measured once; a value holding itself is still refused."""
    from culm.data import sandbox_guards

    real = sandbox_guards._refuse_cycle
    checked: list[object] = []
    monkeypatch.setattr(sandbox_guards, "_refuse_cycle", lambda value, tick: (checked.append(value), real(value, tick)))
    rows = {"rows": [{"id": i, "tags": ["a", "b"]} for i in range(6000)]}
    assert render("x${rows}", {"rows": rows}).startswith("x{'rows': [{'id': 0")
    assert checked == []
    loop: list[object] = [1]
    loop.append([loop, [loop]])
    with pytest.raises(ExpressionLimitError, match="holds itself"):
        render("x ${a}", {"a": loop})
    # measured one depth at a time, a path deeper than its distinct containers proves the cycle:
    # no second walk either
    assert checked == []


@pytest.mark.parametrize(
    "expr",
    ["sorted(x for x in items)", "max(x for x in items)", "min(reversed(items))", "sum(x for x in items)",
     "sorted(reversed(items))", "sorted(zip(items, items))", "sorted(d2.values())", "min(d2.values())"],
)
def test_sorting_or_adding_a_lazy_iterables_items_runs_no_operator(expr: str) -> None:
    with pytest.raises(ExpressionRefusedError, match="__eq__|__lt__|__add__"):
        evaluate(expr, {**NAMES, "items": [S, S], "d2": {"a": S, "b": S}})
    assert RAN == []
    assert evaluate("[sorted(x for x in [3, 1]), max(reversed([1, 2])), sum(v for v in {'a': 1}.values())]", {}) == [[1, 3], 2, 1]


@pytest.mark.parametrize(
    "expr",
    ["1 in reversed(items)", "1 in d2.values()", "('k', 1) in d2.items()", "d2.items() == {('k', 1)}",
     "d2.values() == 1 or 1 in d2.values()", "str(d2.values())", "1 in (x for x in items)"],
)
def test_a_lazy_or_view_operand_is_walked(expr: str) -> None:
    with pytest.raises(ExpressionRefusedError, match="__eq__|__str__|__repr__|__hash__"):
        evaluate(expr, {**NAMES, "items": [S, S], "d2": {"a": S, "b": S}})
    assert RAN == []
    assert evaluate("[1 in reversed([1]), 1 in d.values(), ('k', 1) in d.items(), str(d.values())]", NAMES) == [
        True, True, True, "dict_values([1])"]


def test_standard_library_holders_are_walked() -> None:
    import types as pytypes

    ns = pytypes.SimpleNamespace(a=S)
    names = {**NAMES, "ns": ns, "ud": collections.UserDict(a=S), "ul": collections.UserList([S]),
             "cm": collections.ChainMap({"a": S}), "sl": slice(Reprs())}
    RAN.clear()
    for expr in ("str(ns)", "ns == 1 or ns == ns", "str(ud)", "ul == [1]", "str(cm)", "str(sl)"):
        with pytest.raises(ExpressionRefusedError, match="__str__|__repr__|__eq__|__format__"):
            evaluate(expr, names)
    with pytest.raises(ExpressionRefusedError):
        render("x${ns}", names)
    with pytest.raises(ExpressionError) as info:
        evaluate("[1].index(ns)", {"ns": pytypes.SimpleNamespace(a=Reprs())})
    assert "Reprs()" not in str(info.value)
    assert RAN == []
    plain = {"ns": pytypes.SimpleNamespace(a=1), "ud": collections.UserDict(a=1)}
    assert evaluate("[str(ns), ns.a, str(ud)]", plain) == ["namespace(a=1)", 1, "{'a': 1}"]


def test_set_and_dict_operators_check_the_keys() -> None:
    keyed, keys = {S: 1}, {S}
    RAN.clear()
    names = {"a": keyed, "sa": keys}
    for expr in ("a | {1: 2}", "{1: 2} | a", "sa - {1}", "{1} & sa", "sa ^ {2}", "sa | sa"):
        with pytest.raises(ExpressionRefusedError, match="__hash__|__eq__"):
            evaluate(expr, names)
    assert RAN == []
    assert evaluate("[{1: 2} | {3: 4}, {1, 2} - {2}, {1} & {1, 2}]", {}) == [{1: 2, 3: 4}, {1}, {1}]


class Counted(list):  # type: ignore[type-arg]
    def __len__(self) -> int:
        RAN.append("len")
        return 100

    def __eq__(self, other: object) -> bool:
        RAN.append("eq")
        return False

    __hash__ = None  # type: ignore[assignment]


def test_refusing_a_container_subclass_does_not_measure_it_first() -> None:
    """Refusing ``x == [1]`` for a list subclass with its own ``__eq__`` once ran its ``__len__``
    (to decide whether to remember the walk)."""
    counted = Counted([1] * 80)
    RAN.clear()
    with pytest.raises(ExpressionRefusedError, match="__eq__"):
        evaluate("x == [1] or [1] == x", {"x": counted})
    assert RAN == []


class LazyRecords(collections.abc.Mapping):
    """A user's mapping over a remote store: Mapping's ready-made __eq__, get and __contains__
    call its own __getitem__, __iter__ and __len__ (each one a query)."""

    def __getitem__(self, key: str) -> int:
        RAN.append("getitem")
        return 1

    def __iter__(self):
        RAN.append("iter")
        return iter(["a"])

    def __len__(self) -> int:
        RAN.append("len")
        return 1


def test_an_abstract_bases_ready_made_operators_on_a_users_class_are_refused() -> None:
    """collections.abc's and numbers' methods are standard library code, but they run the user's
    class's own protocol methods: trusted for a standard library class only."""
    names = {"m": LazyRecords(), "ud": collections.UserDict({"a": 1})}
    for expr in ("m == {'a': 1}", "{'a': 1} == m", "[m] == [{}]"):
        with pytest.raises(ExpressionRefusedError, match="__eq__"):
            evaluate(expr, names)
    assert RAN == []
    assert evaluate("[ud == {'a': 1}, 'a' in ud]", names) == [True, True]


def test_ip_addresses_and_networks_compare() -> None:
    """ipaddress's order comes from functools.total_ordering: judged by the class holding it."""
    import ipaddress

    names = {"ip": ipaddress.ip_address("10.0.0.1"), "net": ipaddress.ip_network("10.0.0.0/8")}
    assert evaluate("[ip == ip, ip < ip, ip in [ip], ip in net, net == net, str(max([ip]))]", names) == [
        True, False, True, True, True, "10.0.0.1"]


def test_counter_arithmetic_does_not_run_the_counts_operators() -> None:
    """Counter's +, |, &, unary + and - are Python code that adds and compares the counts."""
    names = {"ct": collections.Counter({"a": Session()}), "c2": collections.Counter({"a": 1}),
             "ok": collections.Counter({"a": 2})}
    for expr in ("ct + c2", "ct | c2", "ct & c2", "+ct", "-ct", "c2 + ct"):
        with pytest.raises(ExpressionRefusedError):
            evaluate(expr, names)
    assert RAN == []
    assert evaluate("dict(ok + c2)", names) == {"a": 3}


def test_a_long_list_of_value_objects_is_timed_while_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk reads the clock as it goes over items, not only containers: a flat list of a
    million datetimes compared took 2.6 s past the 0.5 s limit."""
    from culm.data import sandbox_objects

    ticks: list[int] = []
    when = datetime.datetime(2024, 1, 1)
    refusal = sandbox_objects.operator_refusal([when] * 5000, sandbox_objects.COMPARE_DUNDERS, "comparing",
                                               tick=lambda: ticks.append(1))
    assert refusal is None and len(ticks) >= 5000 // 512
