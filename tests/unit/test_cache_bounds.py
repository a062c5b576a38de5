"""The caches of parsed expressions, templates and conditions hold bounded memory, whatever texts come.

They were bounded by entries only, and an entry grows with its text: 1,024 distinct expressions of
3 KB (one tree of 3.5 MB) kept 550 MB of syntax trees in a worker for good, 4,096 templates of
4 KB with 590 fragments each 800 MB (found probing, session 12). Each test feeds many distinct large
texts and measures what stays allocated afterwards (tracemalloc), then checks that what the caches
are for still works: the same text is parsed once.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from culm.data import boolrule, sandbox, template
from culm.data.memo import WeightedMemo

pytestmark = pytest.mark.timeout(120)

# What each cache may keep after the texts below (they kept 17 to 54 MB of them).
KEPT_BOUND = 20_000_000


def kept_after(feed: Callable[[int], object], count: int) -> int:
    """Bytes still allocated after ``feed(i)`` for ``i`` in ``range(count)`` (results dropped)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            feed(i)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_many_large_distinct_expressions_keep_bounded_syntax_trees() -> None:
    sandbox._parsed.clear()
    kept = kept_after(lambda i: sandbox.parse("[" + ",".join(["f'{a}'"] * 490) + f",{i}]"), 100)
    assert kept < KEPT_BOUND, f"{kept / 1e6:.0f} MB kept"
    assert sandbox._parsed.weight <= sandbox.PARSE_CACHE_NODES
    assert sandbox.parse("a + 1") is sandbox.parse("a + 1")


def test_many_large_distinct_templates_keep_bounded_pieces_and_references() -> None:
    def feed(i: int) -> object:
        text = "".join(f"${{b{j}}}" for j in range(590)) + str(i)
        return template._compiled(text), template.references(text)

    kept = kept_after(feed, 250)
    assert kept < KEPT_BOUND, f"{kept / 1e6:.0f} MB kept"
    assert template.COMPILED.weight <= template.CACHE_WEIGHT
    assert template.REFERENCES.weight <= template.CACHE_WEIGHT
    assert template.references("${a}-${b}") == {"${a}", "${b}"}
    assert template._compiled("x${a}") is template._compiled("x${a}")


def test_many_large_distinct_conditions_keep_bounded_parses() -> None:
    kept = kept_after(lambda i: boolrule.evaluate_condition(" or ".join(["a == 1"] * 833) + f" or {i} == 0"), 100)
    assert kept < KEPT_BOUND / 3, f"{kept / 1e6:.0f} MB kept"
    assert boolrule._PARSED.weight <= boolrule.PARSE_CACHE_TOKENS
    assert boolrule._parse("a == 1") is boolrule._parse("a == 1")


def test_a_weighted_memo_empties_when_full_and_skips_an_entry_too_heavy() -> None:
    memo: WeightedMemo[str, int] = WeightedMemo(max_entries=3, max_weight=80)
    assert memo.keep("heavy", 1, 11) == 1 and len(memo) == 0  # over an eighth of the budget
    for key in "abc":
        memo.keep(key, 0, 10)
    assert sorted(memo.data) == ["a", "b", "c"] and memo.weight == 30
    memo.keep("d", 0, 10)  # a fourth entry: emptied first
    assert sorted(memo.data) == ["d"] and memo.weight == 10
    for key in "efghijk":
        memo.keep(key, 0, 10)
    assert memo.weight <= 80
