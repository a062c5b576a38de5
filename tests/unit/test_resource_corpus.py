"""Resource payloads: expressions whose cost hides inside one builtin, method or operator call.

Each class below was found probing as an attacker would (issue 15): the builtin does its work in C
before any check of the evaluator can see it. Every payload must be refused with an
:class:`ExpressionLimitError` naming the bound, well within 2 s, without the evaluation growing the
process by more than :data:`MEMORY_BOUND` (traced with tracemalloc) — through ``sandbox.evaluate``,
through a template and in a gateway condition. Harmless neighbours of each class must still work.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import time
import tracemalloc
from array import array
from collections import UserList, UserString, deque
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from culm.data import sandbox, sandbox_eval, template
from culm.data.boolrule import evaluate_gateway_condition
from culm.errors import ExpressionError, ExpressionLimitError

pytestmark = pytest.mark.timeout(60)

# The documented ceiling (docs/data-and-variables.md): what one evaluation may add to a process.
MEMORY_BOUND = 64_000_000
SECONDS = 2.0

P = "(2**61-1)"
HASH_COLLISIONS = [
    f"set(i*{P} for i in range(20000))",
    f"len(set([i*{P} for i in range(20000)]))",
    f"{{i*{P}: 1 for i in range(20000)}}",
    f"{{i*{P} for i in range(20000)}}",
    f"dict(zip([i*{P} for i in range(20000)], range(20000)))",
    f"dict([(i*{P}, 0) for i in range(20000)])",
    f"len({{(i*{P},) for i in range(20000)}})",
    f"set([i*{P} for i in range(20000)]).union([1])",
    f"set().union([i*{P} for i in range(20000)])",
    f"set().issubset([i*{P} for i in range(20000)])",
    f"set().isdisjoint(i*{P} for i in range(20000))",
    f"[x in {{i*{P} for i in range(3000)}} for x in range(3000)]",
    f"set([i*{P} for i in range(60)]) | set([i*{P} for i in range(60, 120)])",
    "{" + ", ".join(f"{i}*{P}" for i in range(70)) + "}",
]
MATERIALISED = [
    "list(range(10**3999, 10**3999 + 10**6))",
    "tuple(range(10**3999, 10**3999 + 10**6))",
    "sorted(range(10**3999, 10**3999 + 10**6))",
    "sum(range(10**3999, 10**3999 + 10**6))",
    "max(range(10**3999, 10**3999 + 10**6))",
    "list(zip('a'*10**6, 'b'*10**6, 'c'*10**6, 'd'*10**6, 'e'*10**6, 'f'*10**6))",
    "list(enumerate('a'*10**6))",
    "len(list(enumerate(range(10**6))))",
    "set(range(10**6))",
    "dict(enumerate(range(10**6)))",
    "sorted(zip(range(10**6), range(10**6)))",
    "min(zip('a'*10**6, 'b'*10**6))",
    "'-'.join(str(x) for x in range(10**6))",
]
BIG_INTS = [
    "int('f' * 10**6, 16) // 3",
    "int('1' * 10**6, 2) % 7",
    "int('7' * 10**6, 8) // int('7' * 10**5, 8)",
    "int('f' * 4000, 16) // int('f' * 3000, 16)",
    "pow(3, -(10**3999), 10**3999 + 1)",
    "pow(3, -5, 2**5000 + 1)",
    "(2**13000 | 2**13287) << 2",
    "sum([10**3999] * 8000)",
    "[10**3999 + i for i in range(100)][-1] * 10**3999",
]
STRINGS = [
    "('a'*10**6).replace('', 'b')",
    "('ab'*10**5).replace('a', 'x'*100)",
    "'x'.join(['a'*10**5]*20)",
    "('\\t'*10**5).expandtabs(100)",
    "('a'*1000).center(10**7)",
    "'%s%s' % ('a'*10**6, 'b')",
    "'{}{}'.format('a'*10**6, 'a'*10**6)",
    "f'{\"a\"*10**6}{\"b\"}'",
    "f'{1:>{10**7}}'",
    "('a,'*500000).split(',')",
    "(' a'*500000).split()",
    "('a\\n'*500000).splitlines()",
    "('ﬃ'*10**6).upper()",
    "str(list(range(10**6)))",
    "list('a'*10**6) + list('b'*10**6)",
    "[1]*10**6 + [2]*10**6",
    "('a'*10**6)[::1] * 2",
]
MEMORY = [
    "[(t[:-1], t[:-1], t[:-1], t[:-1], t[:-1], t[:-1], t[:-1], t[:-1], t[:-1], t[:-1]) * 9 for t in ['a' * 10**6]]",
    "[(" + ", ".join(["t[1:]"] * 80) + ") for t in ['a' * 10**6]]",
    "[f'" + "{t!r}" * 60 + "' for t in ['a' * 999000]]",
    "[f'" + "{t!a}" * 60 + "' for t in ['é' * 999000]]",
    "[list(range(10**5)) for i in range(100)]",
    "[[x for x in range(10**5)], [x for x in range(10**5)], [x for x in range(10**5)], [x for x in range(10**5)]] * 3",
    "[{x} for x in range(10**6)]",
    "[{x: x} for x in range(10**6)]",
    "[[] for x in range(10**6)]",
    "[(x,) for x in range(10**6)]",
    "[str(x) * 10 for x in range(10**6)]",
    "[float(x) for x in range(10**6)]",
    "[[0] * 1000 for i in range(1000)]",
]

# dict.keys() and dict.items() are set-like: their operators build a set from any iterable in C,
# past the checks that set() and set methods go through (found probing, session 10).
DICT_VIEWS = [
    f"dict(a=1).keys() ^ range(0, 20000*{P}, {P})",
    f"dict(a=1).keys() | [i*{P} for i in range(20000)]",
    f"len(range(0, 20000*{P}, {P}) | dict(a=1).keys())",
    f"dict(a=1).items() - [(i*{P}, 0) for i in range(20000)]",
    f"dict(a=1).keys() ^ (i*{P} for i in range(20000))",
    "len(dict(a=1).keys() | enumerate('a'*10**6))",
    "len(dict(a=1).keys() | range(10**6))",
    "dict(a=1).keys() - range(10**6)",
    "dict(a=1).keys() & zip(range(10**6), range(10**6))",
]

# all(), any() and "in" consumed an iterator in C: a zip of 600 ranges of a million items ran 4 s
# inside one all(), past the 0.5 s limit, the clock unread (found probing, session 12).
R = ", ".join(["r"] * 600)
R30 = ", ".join(["r"] * 30)
ZIPS = ", ".join([f"zip({R30})"] * 20)
LAZY_CONSUMERS = [
    f"[all(zip({R})) for r in [range(10**6)]]",
    f"[(None,) in zip({R}) for r in [range(10**6)]]",
    f"[-1 not in zip({R}) for r in [range(10**6)]]",
    f"[all(enumerate(zip({R}))) for r in [range(10**6)]]",
    f"[0 in enumerate(zip({R})) for r in [range(10**6)]]",
    f"[all(zip({ZIPS})) for r in [range(10**6)]]",
    f"[0 < 1 in zip({ZIPS}) for r in [range(10**6)]]",
    f"[any(x is None for x in [0]) or all(zip({R})) for r in [range(10**6)]]",
    f"[all(zip(reversed(r), {R})) for r in [range(10**6)]]",
]

PAYLOADS = [
    *(pytest.param(p, id=f"hash-{i}") for i, p in enumerate(HASH_COLLISIONS)),
    *(pytest.param(p, id=f"materialised-{i}") for i, p in enumerate(MATERIALISED)),
    *(pytest.param(p, id=f"bigint-{i}") for i, p in enumerate(BIG_INTS)),
    *(pytest.param(p, id=f"strings-{i}") for i, p in enumerate(STRINGS)),
    *(pytest.param(p, id=f"memory-{i}") for i, p in enumerate(MEMORY)),
    *(pytest.param(p, id=f"dictview-{i}") for i, p in enumerate(DICT_VIEWS)),
    *(pytest.param(p, id=f"lazy-{i}") for i, p in enumerate(LAZY_CONSUMERS)),
]


def bounded(call: Any) -> tuple[BaseException | None, float, int]:
    """Run ``call``; return what it raised, the seconds it took and the traced memory peak.

    Seconds of this thread's CPU time: the clock of the sandbox's limits (``render_clock``); on a
    busy machine the wall clock also counts time the thread waited for a core."""
    tracemalloc.start()
    start = time.thread_time()
    raised: BaseException | None = None
    try:
        call()
    except ExpressionError as exc:
        raised = exc
    finally:
        elapsed = time.thread_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, elapsed, peak


def test_the_corpus_covers_every_class() -> None:
    assert len(PAYLOADS) >= 60
    classes = (HASH_COLLISIONS, MATERIALISED, BIG_INTS, STRINGS, MEMORY, DICT_VIEWS, LAZY_CONSUMERS)
    assert min(map(len, classes)) >= 8


def test_the_memory_ceiling_leaves_room_for_the_values_given() -> None:
    assert sandbox.MAX_MEMORY < MEMORY_BOUND


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_is_refused_quickly_and_small(payload: str) -> None:
    raised, elapsed, peak = bounded(lambda: sandbox.evaluate(payload, {}))
    assert isinstance(raised, ExpressionLimitError), f"{payload!r} gave {raised!r}"
    assert elapsed < SECONDS, f"{payload!r} took {elapsed:.2f}s"
    assert peak < MEMORY_BOUND, f"{payload!r} traced {peak / 1e6:.0f} MB"
    assert sandbox.evaluate("x + 1", {"x": 1}) == 2


# Fragments cannot hold braces (bamboo's rule): those payloads stay text in a template.
TEMPLATED = [p for p in PAYLOADS if not set("{}$#") & set(p.values[0])]


@pytest.mark.parametrize("payload", TEMPLATED[::3])
def test_payload_in_a_template_fails_the_render(payload: str) -> None:
    raised, elapsed, peak = bounded(lambda: template.render("v=${" + payload + "}", {}))
    assert isinstance(raised, ExpressionLimitError), f"{payload!r} gave {raised!r}"
    assert elapsed < SECONDS and peak < MEMORY_BOUND


@pytest.mark.parametrize("payload", PAYLOADS[1::4])
def test_payload_in_a_gateway_condition_is_refused(payload: str) -> None:
    raised, elapsed, peak = bounded(lambda: evaluate_gateway_condition(payload + " == 1", {}))
    assert raised is not None and elapsed < SECONDS and peak < MEMORY_BOUND


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("len(set(range(1000)))", 1000),
        ("len({i * (2**61 - 1) for i in range(60)})", 60),  # a few colliding keys are fine
        ("dict(zip('ab', [1, 2]))", {"a": 1, "b": 2}),
        ("dict({'a': 1}, b=2)", {"a": 1, "b": 2}),
        ("sum(range(10**6))", 499999500000),
        ("max(range(10**6)), min(3, 1, 2)", (999999, 1)),
        ("len(list(range(10**5))), sorted('cab'), tuple(x for x in 'ab')", (100000, ["a", "b", "c"], ("a", "b"))),
        ("sorted([3, 1, 2], reverse=True), sorted(['bb', 'a'], key=len)", ([3, 2, 1], ["a", "bb"])),
        ("int('ff', 16), int('1' * 64, 2) == 2**64 - 1, int('  42 ')", (255, True, 42)),
        ("pow(3, -1, 7), pow(2, 10, 1000)", (5, 24)),
        ("{1, 2}.union([3], (4,)), {1}.issubset([1, 2]), {1} | {2}", ({1, 2, 3, 4}, True, {1, 2})),
        ("'a,b'.split(','), 'a b'.split(), 'x\\ny'.splitlines(), '-'.join(str(i) for i in range(3))",
         (["a", "b"], ["a", "b"], ["x", "y"], "0-1-2")),
        ("sum([[1], [2]], []), [1] * 3 + [2]", ([1, 2], [1, 1, 1, 2])),
        ("len(str(10**3999)), -(10**3999) // 10**3998", (4000, -10)),
        ("dict(a=1, b=2).keys() | ['c'], dict(a=1).keys() & 'ab', ['a', 'z'] - dict(a=1).keys()",
         ({"a", "b", "c"}, {"a"}, {"z"})),
        ("dict(a=1).items() ^ [('b', 2)], set() | dict(a=1).keys(), sorted(dict(b=1, a=2).keys())",
         ({("a", 1), ("b", 2)}, {"a"}, ["a", "b"])),
        ("all(zip('ab', 'cd')), any(reversed([0, 1])), (1, 'b') in enumerate('ab'), 3 not in zip([3])",
         (True, True, True, True)),
        ("all(zip()), any(enumerate([])), 1 < 2 in zip([2]), [x in zip([1], [2]) for x in [(1, 2), (2, 1)]]",
         (True, False, False, [True, False])),
    ],
)
def test_harmless_neighbours_still_work(expr: str, expected: object) -> None:
    assert sandbox.evaluate(expr, {}) == expected


def test_ints_from_the_callers_names_are_capped_before_quadratic_operators() -> None:
    huge = int("f" * 100_000, 16)
    for expr in ("x // 3", "x % 7", "x / 3", "3 ** x"):
        with pytest.raises(ExpressionLimitError, match="digits"):
            sandbox.evaluate(expr, {"x": huge})


def test_the_clock_is_read_at_every_call() -> None:
    # Each call takes a few ms; a tuple of them must stop at the time limit, not 32 steps later.
    names = {"big": list(range(200_000))}
    expr = "(" + ", ".join(["sorted(big)"] * 400) + ")"
    raised, elapsed, _peak = bounded(lambda: sandbox.evaluate(expr, names))
    assert isinstance(raised, ExpressionLimitError)
    assert elapsed < SECONDS


def test_the_variables_of_one_node_cannot_add_up_past_the_ceiling() -> None:
    # 40 splice variables each rendering just under MAX_RENDER_OUTPUT, all needed by one node.
    from culm.core import data as cdata
    from culm.core.records import ContextValue
    from culm.errors import HydrationError

    count = 40
    stored = {f"${{v{i}}}": ContextValue(f"${{v{i}}}", "splice", "${'a' * 999000 + 'b'}") for i in range(count)}
    raw = {f"x{i}": {"type": "splice", "value": f"${{v{i}}}"} for i in range(count)}

    def fetch(keys: Any) -> dict[str, ContextValue]:
        return {k: stored[k] for k in keys if k in stored}

    tracemalloc.start()
    try:
        with pytest.raises(HydrationError, match="more text than allowed in all"):
            cdata.render_inputs(raw, fetch, lambda var, value: value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND
    few = {k: raw[k] for k in list(raw)[:3]}
    assert [len(v) for v in cdata.render_inputs(few, fetch, lambda var, value: value).values()] == [999001] * 3


def test_a_dict_view_is_measured_before_it_is_turned_into_text() -> None:
    # str() of a view is as long as its dict's: refused from its measure, not after 9 MB of text.
    names = {"d": {i: "a" * 9000 for i in range(1000)}}
    for expr in ("d.values()", "d.items()", "'%s' % (d.values(),)", "str(d.items())"):
        with pytest.raises(ExpressionLimitError, match="too large to render|formatted string"):
            template.render("${" + expr + "}", names)
    assert template.render("${dict(a=1).items()}", {}) == "dict_items([('a', 1)])"


def test_the_templates_of_one_node_share_one_time_budget(monkeypatch) -> None:
    # Each input renders within every limit of its own; 400 of them took 400 times as long, an
    # hour for 10,000 inputs of 0.3 s (found probing, session 12). Generous per-expression limits
    # here, so that only the node's budget can stop them.
    from culm.core import data as cdata

    monkeypatch.setattr(sandbox, "TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "RENDER_TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "NODE_RENDER_TIME_LIMIT", 0.3)
    raw = {f"x{i}": {"type": "splice", "value": f"${{len([x for x in range(20000)]) + {i}}}"} for i in range(400)}
    start = time.thread_time()
    with pytest.raises(ExpressionLimitError, match="templates of one node took longer than 0.3 seconds"):
        cdata.render_inputs(raw, lambda keys: {}, lambda var, value: value)
    # 400 x 20,000 comprehension steps take 12 s of CPU here; the budget stops them after 0.3 s of
    # CPU (plus one input's work)
    assert time.thread_time() - start < 3.0
    few = dict(list(raw.items())[:2])
    assert cdata.render_inputs(few, lambda keys: {}, lambda var, value: value) == {"x0": "20000", "x1": "20001"}


def test_the_conditions_of_one_gateway_share_one_time_budget(monkeypatch) -> None:
    from culm.core.data import GatheredInputs
    from culm.core.handlers.gateways import _How, _judge
    from culm.model.compiled import Condition

    monkeypatch.setattr(sandbox, "TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "RENDER_TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "NODE_RENDER_TIME_LIMIT", 0.3)
    conds = [Condition(f"f{i}", f"t{i}", f"${{len([x for x in range(20000)]) + {i}}} == 0") for i in range(400)]
    start = time.thread_time()
    how = _How(first_only=False, func=None, extra_info={}, nested_objects=False)
    verdict = _judge(conds, GatheredInputs({}, {}, frozenset(), {}), lambda var, value: value, how)
    assert isinstance(verdict, str) and "took longer than 0.3 seconds to render in all" in verdict, verdict
    assert time.thread_time() - start < 3.0


# A Decimal or a Fraction in a context (a component returning money, a run given one) converted to
# an int or to fixed-point text: int(Decimal('1e999999999')) builds a billion-digit int, for
# minutes; '{:f}' of it took 1.9 GB (found probing, session 12).
NUMBER_NAMES = {"d": Decimal("1e999999999"), "tiny": Decimal("1e-999999999"), "half": Fraction(3, 2),
                "huge": Fraction(10**5000, 3)}
NUMBERS = ["int(d)", "round(d)", "round(d, 2)", "'%d' % d", "'%i' % (d,)", "'%(d)d' % dict(d=d)", "'%f' % tiny",
           "'{:f}'.format(d)", "'{x:.2f}'.format_map(dict(x=tiny))", "f'{d:f}'", "f'{tiny:f}'", "half ** 10**7",
           "int(huge)", "round(huge)", "'%d' % huge",
           # a Fraction of denominator 1 as the exponent: an exact power inside Fraction.__rpow__ /
           # __pow__ (10 ** Fraction(10**8) ran for minutes; found probing, session 13)
           "10 ** (half * 0 + 10**8)", "pow(10, half * 0 + 10**8)", "(half * 0 + 7) ** (half * 0 + 10**8)",
           "10 ** (half * 0 - 10**8)", "half ** (half * 0 - 10**8)"]


@pytest.mark.parametrize("payload", NUMBERS)
def test_decimal_and_fraction_values_are_refused_before_they_convert(payload: str) -> None:
    raised, elapsed, peak = bounded(lambda: sandbox.evaluate(payload, NUMBER_NAMES))
    assert isinstance(raised, ExpressionLimitError) and "4000 digits" in str(raised), f"{payload!r} gave {raised!r}"
    assert elapsed < SECONDS and peak < MEMORY_BOUND


def test_decimal_and_fraction_values_of_a_usual_size_still_convert() -> None:
    names = {"price": Decimal("1234.565"), "ratio": Fraction(7, 2)}
    assert sandbox.evaluate("int(price), round(price, 1), '%d' % price, f'{price:.2f}', '{:f}'.format(price)",
                            names) == (1234, Decimal("1234.6"), "1234", "1234.56", "1234.565")
    assert sandbox.evaluate("int(ratio), round(ratio), ratio ** 3, '%.1f' % ratio", names) == (
        3, 4, Fraction(343, 8), "3.5")
    assert sandbox.evaluate("2 ** (ratio * 0 + 10), ratio ** (ratio * 0 - 2), 4 ** (ratio - 3), 1 ** (ratio * 0 + 10**8)",
                            names) == (1024, Fraction(4, 49), 2.0, 1)
    assert template.render("total: ${int(price) + 1}", names) == "total: 1235"


# Sequences a context may hold besides str and list (a component's bytes, a deque, an array):
# "%" and "*" on them ran unchecked: b'%999999999d' % 1 took 950 MB, a bytearray's 2.8 GB, and
# deque([1]) * 10**9 8 GB (found probing, session 12).
SEQUENCE_NAMES = {"b": b"%999999999d", "ba": bytearray(b"%999999999d"), "us": UserString("%999999999d"),
                  "dq": deque([1, 2]), "arr": array("d", [1.0]), "ul": UserList([1]), "small": b"%3d|%s"}
SEQUENCES = ["b % 1", "ba % (1,)", "us % 1", "small[0:3] * 400000 % tuple(range(400000))", "ba * 10**9",
             "dq * 10**9", "10**9 * arr", "ul * 10**9"]


@pytest.mark.parametrize("payload", SEQUENCES)
def test_other_sequences_are_sized_before_they_are_formatted_or_repeated(payload: str) -> None:
    raised, elapsed, peak = bounded(lambda: sandbox.evaluate(payload, SEQUENCE_NAMES))
    assert isinstance(raised, ExpressionLimitError), f"{payload!r} gave {raised!r}"
    assert elapsed < SECONDS and peak < MEMORY_BOUND


def test_other_sequences_of_a_usual_size_still_format_and_repeat() -> None:
    assert sandbox.evaluate("small % (5, small[0:1]), len(dq * 3), us[0:1] * 2", SEQUENCE_NAMES) == (
        b"  5|%", 6, UserString("%%"))


# A format text of a million characters was parsed field by field (or "%" by "%") in one Python
# loop no clock saw: '%%' * 499999 took 0.4 s inside one "%", then the next call another 0.4 s.
# The clock is now read every 4,096 fields: counted here with a clock that moves one second a reading.
@pytest.mark.parametrize("expr", ["f % ()", "g.format()", "g.format_map({})"])
def test_long_format_texts_read_the_clock_as_they_are_parsed(monkeypatch: pytest.MonkeyPatch, expr: str) -> None:
    readings = itertools.count()
    monkeypatch.setattr(sandbox_eval, "render_clock", lambda: float(next(readings)))
    names = {"f": "%%" * 499_999, "g": "{{" * 499_999}
    with pytest.raises(ExpressionLimitError, match="ran longer than 50"):
        sandbox.evaluate(expr, names, limits=replace(sandbox.Limits.current(), time_limit=50))
    assert 50 < next(readings) < 60


# A date, datetime or time in a context formats its spec with strftime, which is a pattern, not a
# width: '{:%c%c...}'.format(when) wrote 24 characters per 2 of spec, 12 million characters and
# 87 MB from a spec of one million before any check saw the result, and %Z a zone's whole name per
# directive (found probing, session 17).
CLOCK_NAMES = {"when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "day": dt.date(2024, 1, 1),
               "at": dt.time(1, tzinfo=dt.timezone(dt.timedelta(hours=1), "Z" * 1000)),
               "spec": "%c" * 490_000, "zones": "%Z" * 20_000}
CLOCKS = ["('{:' + spec + '}').format(when)", "f'{when:{spec}}'", "f'{day:{spec}}'",
          "('{w:' + spec + '}').format_map(dict(w=day))", "f'{at:{zones}}'", "('{}' + '{:' + zones + '}').format(0, at)"]


@pytest.mark.parametrize("payload", CLOCKS)
def test_dates_and_times_are_sized_by_their_strftime_pattern_before_they_format(payload: str) -> None:
    raised, elapsed, peak = bounded(lambda: sandbox.evaluate(payload, CLOCK_NAMES))
    assert isinstance(raised, ExpressionLimitError) and "would be" in str(raised), f"{payload!r} gave {raised!r}"
    assert elapsed < SECONDS and peak < 16_000_000, f"{payload!r} traced {peak / 1e6:.0f} MB"


def test_dates_and_times_of_a_usual_pattern_still_format() -> None:
    assert sandbox.evaluate("f'{when:%Y-%m-%d %H:%M %Z}', '{:%d/%m}'.format(day), f'{at:%H %z}'[:3]",
                            CLOCK_NAMES) == ("2024-01-01 00:00 UTC", "01/01", "01 ")
    assert template.render("${('%c:%%Y' % 123 + '%c' % 125).format(when)}", CLOCK_NAMES) == "2024"


class _Perm(enum.IntFlag):
    R = 4
    W = 2


def test_flag_combinations_do_not_grow_their_class_for_good() -> None:
    """``p | i`` of an IntFlag member makes a combined member that Python keeps in the class for
    good: each evaluation of ``[p | i for i in range(...)]`` grew a worker by about 1 MB, never given
    back (found probing, session 22). Past MAX_FLAG_MEMBERS kept, a new one is not kept."""
    from culm.data.sandbox_objects import MAX_FLAG_MEMBERS

    names = {"p": _Perm.R, "w": _Perm.W}
    for start in range(0, 3 * MAX_FLAG_MEMBERS, 1_000):
        assert sandbox.evaluate(f"len([p | (i + {start} + 8) for i in range(1000)])", names) == 1000
    assert len(_Perm._value2member_map_) <= MAX_FLAG_MEMBERS + len(_Perm.__members__)
    assert sandbox.evaluate("[str(p | w), (p | w).name, p | w == 6, (p | 8).value]", names) == ["6", "R|W", True, 12]
    assert _Perm(6) is (_Perm.R | _Perm.W)  # the class's own members and early combinations are kept
