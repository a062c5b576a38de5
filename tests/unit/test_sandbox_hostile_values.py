"""Hostile values in a context, found probing the sandbox (session 21).

A context holds what components returned (pickled: sharing kept), what lazy variables built and
what earlier expressions made. Each class here got through once: an object's ``__class__``
property ran inside ``isinstance()``, keys sharing a hash across the 65,536-key chunks of a dict
were not seen, a value sharing its halves 60 levels deep hashed for ever in one C call, and a
holder or a mapping formatted whole wrote its text before its size was checked.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import tracemalloc
from collections import UserDict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from culm.data import sandbox, sandbox_keys, template
from culm.data.boolrule import evaluate_gateway_condition
from culm.errors import ExpressionError, ExpressionLimitError

pytestmark = pytest.mark.timeout(120)

# Bounded, not timed: each of these ran 5 s to for ever before, and a shared 2-core machine under a
# load of 80 stretches a 0.3 s refusal past 5 s (what tells them apart is memory, or no answer).
SECONDS = 30.0


def run(expr: str, names: dict[str, Any]) -> tuple[Any, float, int]:
    """Evaluate ``expr``; return its value or the ExpressionError it raised, the seconds it took and
    the traced memory peak in bytes."""
    tracemalloc.start()
    try:
        start = time.thread_time()  # the limits' clock (render_clock): CPU time
        outcome = _outcome(expr, names)
        return outcome, time.thread_time() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _outcome(expr: str, names: dict[str, Any]) -> Any:
    try:
        return sandbox.evaluate(expr, names)
    except ExpressionError as exc:
        return exc


# ---------------------------------------------------------------- objects claiming a __class__

CLAIMED: list[str] = []


class Claims:
    """An object whose ``__class__`` is a property: ``isinstance()`` runs it whenever the real type
    does not match."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: PLW3201
        CLAIMED.append(type(self).__name__)
        return dict


class ClaimsList(list[int]):
    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: PLW3201
        CLAIMED.append(type(self).__name__)
        return dict


class ClaimsStr(str):
    __slots__ = ()

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: PLW3201
        CLAIMED.append(type(self).__name__)
        return int


CLAIM_EXPRESSIONS = [
    "'%(a)s' % x", "'%d' % x", "'{a}'.format_map(x)", "d[x]", "x + 1", "'a' * x", "x * 2", "pow(x, 2)",
    "sorted(x)", "list(x)", "set(x)", "tuple(x)", "dict(x)", "min(x)", "all(x)", "any(x)", "x[0]", "x[1:]",
    "[1][x]", "int(x)", "round(1.5, x)", "'a'.center(x)", "'a'.join(x)", "'a'.join([x])", "{1}.union(x)",
    "{1} | x", "d.keys() | x", "x | d.keys()", "s.replace(x, 'b')", "'a' in x", "x()", "d.get('a')",
    "sum([1], x)", "'{}'.format(x)", "f'{x}'", "str(x)", "x == 1", "{x}", "x.real",
]


@pytest.mark.parametrize("value", [Claims(), ClaimsList([1, 2]), ClaimsStr("abc")], ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("expr", CLAIM_EXPRESSIONS)
def test_an_objects_claimed_class_is_never_asked(value: object, expr: str) -> None:
    """``isinstance(x, Mapping)`` (``'%(a)s' % x``), ``isinstance(x, int)`` (``'a' * x``),
    ``isinstance(x, Iterator)`` (``all(x)``) and 60 more checks ran the object's own ``__class__``
    property: its code, which a template does not run (and whose answer steered the checks)."""
    CLAIMED.clear()
    run(expr, {"x": value, "d": {"a": value}, "s": "abc"})
    assert CLAIMED == []


@pytest.mark.parametrize("text", ["${x}", "v ${x} w", ["${x}", "${d}"], {"k": "${d}"}])
def test_rendering_and_conditions_never_ask_a_claimed_class(text: Any) -> None:
    CLAIMED.clear()
    for value in (Claims(), ClaimsList([1]), ClaimsStr("abc")):
        try:
            template.render(text, {"x": value, "d": {"a": [value]}})
        except ExpressionError:
            pass
        try:
            evaluate_gateway_condition("${x} == 1", {"x": value})
        except ExpressionError:
            pass
    assert CLAIMED == []


# ---------------------------------------------------------------- keys sharing a hash across chunks

P = 2**61 - 1  # every multiple hashes alike


def chunked_collisions(chunks: int, per_chunk: int, chunk: int = 65_536) -> dict[int, None]:
    """A dict whose keys, in insertion order, hold ``per_chunk`` different keys of one hash in each
    of ``chunks`` runs of ``chunk`` keys (no run alone passes the bound)."""
    keys: list[int] = []
    for index in range(chunks):
        keys += [(index * per_chunk + i + 1) * P for i in range(per_chunk)]
        keys += range(10**7 * (index + 1), 10**7 * (index + 1) + chunk - per_chunk)
    return dict.fromkeys(keys)


@pytest.mark.parametrize("expr", ["d | e", "e | d", "d == e", "e != d", "d.keys() == e.keys()", "d.items() != e.items()"])
def test_keys_sharing_a_hash_in_different_chunks_are_refused(expr: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 keys of one hash in each 65,536-key chunk of a dict: each chunk passed alone, and
    ``d | e`` merged 128 colliding keys (the bound is 64) from a dict two chunks long."""
    monkeypatch.setattr(sandbox, "TIME_LIMIT", 10.0)  # refused for its keys, not for its time
    with pytest.raises(ExpressionLimitError, match="share one hash"):
        sandbox.evaluate(expr, {"d": chunked_collisions(2, 64), "e": {1: 2}})


def test_keys_sharing_a_hash_one_per_chunk_are_counted_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash seen twice in one chunk and once in each of the others is counted over all of them:
    64 keys of it pass, 66 are refused."""
    monkeypatch.setattr(sandbox_keys, "KEY_CHUNK", 16)
    for colliding, refused in ((64, False), (66, True)):
        keys = [P, 2 * P, *range(1000, 1014)]  # one chunk: two keys of the hash
        for index in range(colliding - 2):
            keys += [(index + 3) * P, *range(10**6 * (index + 1), 10**6 * (index + 1) + 15)]
        try:
            sandbox.evaluate("len(d | e)", {"d": dict.fromkeys(keys), "e": {}})
        except ExpressionLimitError as exc:
            assert refused and "share one hash" in str(exc)
        else:
            assert not refused


def test_keys_over_what_the_chunks_can_prove_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_keys, "KEY_CHUNK", 16)
    with pytest.raises(ExpressionLimitError, match="too many to check"):
        sandbox.evaluate("d == e", {"d": dict.fromkeys(range(16 * 66)), "e": {}})
    assert sandbox.evaluate("len(d | e)", {"d": dict.fromkeys(range(16 * 60)), "e": {1: 1}}) == 960


def test_overlapping_dicts_of_distinct_hashes_still_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "TIME_LIMIT", 10.0)  # what is checked here is the answer, not the time
    a, b = dict.fromkeys(range(70_000)), dict.fromkeys(range(60_000, 130_000))
    assert sandbox.evaluate("len(a | b)", {"a": a, "b": b}) == 130_000
    assert sandbox.evaluate("a == b", {"a": a, "b": b}) is False
    assert sandbox.evaluate("len(set(a) - set(b))", {"a": a, "b": b}) == 60_000


# ---------------------------------------------------------------- values sharing their parts


def halves(levels: int) -> tuple[Any, ...]:
    """61 tuples in all, but 2**levels leaves counted as often as they are held."""
    value: tuple[Any, ...] = (1,)
    for _ in range(levels):
        value = (value, value)
    return value


def list_halves(levels: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(levels):
        value = [value, value]
    return value


SHARED_EXPRESSIONS = ["{t}", "{t: 1}", "d[t]", "d.get(t)", "t in s", "t == u", "t < u", "t in d.keys()", "{t} == {u}",
                      "s | {t}", "max(t, u)", "L == M", "L in [M]", "[L].count(M)", "sorted([L, M])"]


@pytest.mark.parametrize("expr", SHARED_EXPRESSIONS)
def test_a_value_sharing_its_halves_is_refused_before_it_is_walked(expr: str) -> None:
    """hash((t, t)) and (t, t) == (u, u) walk every leaf as often as it is held: 2**60 steps in
    one C call for a value of 61 tuples (a component's output keeps its sharing)."""
    names = {"t": halves(60), "u": halves(60), "L": list_halves(60), "M": list_halves(60),
             "d": {1: 2}, "s": {1}}
    outcome, elapsed, _peak = run(expr, names)
    assert isinstance(outcome, ExpressionLimitError), outcome
    assert elapsed < SECONDS


def test_shared_values_within_the_limits_still_compare_and_hash() -> None:
    names = {"t": halves(8), "u": halves(8), "rows": [{"a": i} for i in range(1000)]}
    assert sandbox.evaluate("t == u and len({t, u}) == 1", names) is True
    assert sandbox.evaluate("[rows, rows] == [rows, rows[:]]", names) is True


# ---------------------------------------------------------------- holders and mappings formatted whole


@dataclass
class Row:
    a: object


BIG = list(range(3_000_000))
HOLDERS = {"ns": SimpleNamespace(a=BIG), "ud": UserDict({"k": BIG}), "row": Row(BIG), "d": {"k": BIG}}


@pytest.mark.parametrize("name", list(HOLDERS))
@pytest.mark.parametrize("expr", ["f'{X}'", "'{}'.format(X)", "'%s' % (X,)", "'%s' % X", "f'{X!r:>5}'"])
def test_a_holder_or_mapping_formatted_whole_is_sized_first(name: str, expr: str) -> None:
    """A holder (SimpleNamespace, UserDict, dataclass) was measured to a limit of 0 (a few
    characters) by format() and f-strings, and '%s' % mapping did not count the mapping at all:
    26 million characters were written (5-40 s) before the result's length was refused."""
    outcome, elapsed, peak = run(expr.replace("X", name), HOLDERS)
    assert isinstance(outcome, ExpressionLimitError), outcome
    assert elapsed < SECONDS
    assert peak < 8_000_000, f"{peak / 1e6:.0f} MB"


def test_small_holders_and_mappings_still_format() -> None:
    names = {"ns": SimpleNamespace(a=1), "d": {"k": 1}}
    assert sandbox.evaluate("'%s' % d", names) == "{'k': 1}"
    assert sandbox.evaluate("'%(k)s' % d", names) == "1"
    assert sandbox.evaluate("f'{ns}'", names) == "namespace(a=1)"


# ---------------------------------------------------------------- sizing loops that ran past the clock


@pytest.mark.parametrize("pattern", ["'%Y' * 499_999", "'%' * 999_999", "'%_9d' * 249_999"])
def test_a_long_strftime_pattern_is_refused_without_reading_all_of_it(pattern: str) -> None:
    """strftime_width walked every directive of a million-character pattern before its total was
    checked: 1 to 1.4 s, the clock unread, for a refusal (the time limit is 0.5 s)."""
    names = {"when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}
    with pytest.raises(ExpressionLimitError, match="strftime") as refused:
        sandbox.evaluate(f"when.strftime({pattern})", names)
    # counted until just past the limit (1,000,000), not to the pattern's end (17 to 33 million)
    assert int(re.search(r"would be (\d+) long", str(refused.value)).group(1)) < 1_002_000  # type: ignore[union-attr]
    assert sandbox.evaluate("when.strftime('%Y-%m-%d %Z')", names) == "2024-01-01 UTC"
