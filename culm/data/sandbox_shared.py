"""How much a value sharing its parts makes the interpreter walk.

Comparing or hashing a container walks each item as often as it is held: ``(t, t)`` walks ``t``
twice, and 60 such levels are 61 small tuples walked 2**60 times in one C call. A component's
output keeps its sharing (pickled), so a context may hold such a value; it may as well hold one big
list under two keys of a dict, which compares in two walks of the list. This module counts the
walk without making it: once per distinct container and depth, the times it is held carried as a
number.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from culm.data.sandbox_guards import CONTAINERS, children_of, is_holder
from culm.errors import ExpressionLimitError

_SCALARS = frozenset({str, int, bool, float, bytes, type(None)})
_CHUNK = 4_096


def held_items(value: Any, allowance: int, spare: int, tick: Callable[[], None]) -> tuple[int, int]:
    """``(items walked, items held)`` of ``value``: the items its containers and holders (a
    SimpleNamespace, a dataclass, a UserList) hold, counted as often as a walk of it meets them,
    then each container once. Returned as soon as the items walked pass ``allowance`` times those
    held plus ``spare``.

    The cost is a walk of the distinct containers (once per depth they stand at), never of the
    items as often as held, and at most the items walked: the containers of one depth met as often
    are gathered in C, and only the containers among their items are looked at one by one.
    ``tick`` is called after each group.

    Raises:
        ExpressionLimitError: ``value`` holds itself (a path deeper than its containers).
    """
    level: dict[int, Any] = {id(value): value}  # the distinct containers of one depth, by id
    met: dict[int, int] = {id(value): 1}  # how often a walk meets each of them
    seen: set[int] = set()
    counted: set[int] = set()  # containers whose items are in ``held`` (one may stand at two depths)
    walked = held = 0
    for depth in itertools.count(1):
        if not level:
            return walked, held
        seen.update(level)
        if depth > len(seen):  # a path longer than the distinct containers passes one twice
            raise ExpressionLimitError(
                f"a {type(value).__name__} value holds itself: it has no end to compare or hash")
        below: dict[int, Any] = {}
        met_below: dict[int, int] = {}
        for times, kind, group in _groups(level, met):
            # one list or tuple is read as it is (a copy of 3 million items took 24 MB)
            children = group[0] if len(group) == 1 and (kind is list or kind is tuple) else list(children_of(kind, group))
            walked += times * len(children)
            ids = list(map(id, group))
            if counted.isdisjoint(ids):
                held += len(children)
            else:
                held += sum(1 for _ in children_of(kind, [item for item in group if id(item) not in counted]))
            counted.update(ids)
            if walked > allowance * held + spare:
                return walked, held
            _carry(children, times, below, met_below)
            tick()
        level, met = below, met_below
    raise AssertionError("unreachable")  # pragma: no cover


def _groups(level: dict[int, Any], met: dict[int, int]) -> Iterator[tuple[int, type, list[Any]]]:
    """The containers of ``level`` by how often they are met, then by type (gathered in C), in
    chunks of at most ``_CHUNK`` (the clock is read between them)."""
    counts = set(met.values())
    for times in counts:
        items = list(level.values()) if len(counts) == 1 else [level[key] for key, n in met.items() if n == times]
        kinds = list(map(type, items))
        for kind in set(kinds):
            group = list(itertools.compress(items, map(operator.is_, kinds, itertools.repeat(kind))))
            for start in range(0, len(group), _CHUNK):
                yield times, kind, group[start:start + _CHUNK]


def _carry(children: Sequence[Any], times: int, below: dict[int, Any], met: dict[int, int]) -> None:
    """Add the containers and holders among ``children`` (each met ``times`` times) to ``below``."""
    held = [kind for kind in set(map(type, children)) - _SCALARS if issubclass(kind, CONTAINERS) or is_holder(kind)]
    if not held:
        return
    kinds = list(map(type, children))
    for kind in held:
        found = list(itertools.compress(children, map(operator.is_, kinds, itertools.repeat(kind))))
        ids = list(map(id, found))
        if len(set(ids)) == len(ids) and below.keys().isdisjoint(ids):  # the commonest: each met once
            below.update(zip(ids, found, strict=True))
            met.update(zip(ids, itertools.repeat(times)))
            continue
        for key, child in zip(ids, found, strict=True):
            below[key] = child
            met[key] = met.get(key, 0) + times
