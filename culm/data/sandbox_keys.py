"""Keys sharing a hash in the sets and dicts an expression is given, found without copying them.

CPython compares a new key with every stored key of the same hash, so an operator on sets or dicts
whose keys collide (every multiple of 2**61-1 hashes alike) does n²/2 comparisons inside one C
call. The evaluator's ``hashed`` tells the keys of one new set apart exactly; the keys of a
context's set or dict (millions, perhaps) are looked at here a chunk at a time, counted in C.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from culm.errors import ExpressionLimitError

KEY_CHUNK = 65_536
# Different keys of one set or dict that may share a hash: legitimate data rarely has two.
MAX_HASH_COLLISIONS = 64


def check_spread(
    keys: Callable[[], Iterator[Any]], what: str, exact: Callable[[list[Any], str], Any],
    tick: Callable[[], None],
) -> None:
    """Refuse the keys ``keys()`` yields when more than :data:`MAX_HASH_COLLISIONS` different ones
    share a hash, wherever they stand.

    A chunk of :data:`KEY_CHUNK` keys is counted in C; ``exact`` (the evaluator's ``hashed``) tells
    a chunk's keys apart when many of them share hashes. A hash seen more than once in a chunk is
    remembered with its count; one seen at most once per chunk is shared by at most as many keys as
    there are chunks, so a hash whose remembered count plus the number of chunks passes the bound is
    counted exactly in a second pass (in C, and only then). Keys shared one per chunk by 64 chunks,
    or 64 per chunk by many chunks, got through when chunks were looked at alone.

    Raises:
        ExpressionLimitError: Too many different keys share one hash, or there are more keys than
            this bound can be proved for (over ``KEY_CHUNK * (MAX_HASH_COLLISIONS + 1)``).
    """
    repeated: dict[int, int] = {}
    chunks = 0
    source = keys()
    while chunk := list(itertools.islice(source, KEY_CHUNK)):
        chunks += 1
        if chunks > MAX_HASH_COLLISIONS + 1:
            raise ExpressionLimitError(
                f"{what}: more than {KEY_CHUNK * (MAX_HASH_COLLISIONS + 1):,} keys, too many to check "
                "for keys sharing a hash")
        hashes = list(map(hash, chunk))
        excess = len(hashes) - len(set(hashes))
        if excess > MAX_HASH_COLLISIONS:
            exact(chunk, what)  # told apart exactly: repeated equal keys are no collision
        if excess:
            for key, count in collections.Counter(hashes).items():
                if count > 1:
                    repeated[key] = repeated.get(key, 0) + count
        tick()
    if chunks > 1:
        suspects = {key for key, count in repeated.items() if count + chunks > MAX_HASH_COLLISIONS + 1}
        if suspects:
            _count_exactly(keys(), suspects, what, exact, tick)


def _count_exactly(
    source: Iterator[Any], suspects: set[int], what: str, exact: Callable[[list[Any], str], Any],
    tick: Callable[[], None],
) -> None:
    """Count the keys of each suspect hash over all chunks; tell apart those of a hash shared by
    more keys than the bound allows."""
    counts: collections.Counter[int] = collections.Counter()
    held: dict[int, list[Any]] = {}
    while chunk := list(itertools.islice(source, KEY_CHUNK)):
        hashes = list(map(hash, chunk))
        picked = list(map(suspects.__contains__, hashes))
        counts.update(itertools.compress(hashes, picked))
        for key in itertools.compress(chunk, picked):
            held.setdefault(hash(key), []).append(key)
        tick()
    for key, count in counts.items():
        if count > MAX_HASH_COLLISIONS + 1:
            exact(held[key], what)


def chained(holders: Iterable[Any], keys_of: Callable[[Any], Iterator[Any]]) -> Callable[[], Iterator[Any]]:
    """A function that yields the keys of every holder, each time it is called."""
    listed = list(holders)
    return lambda: itertools.chain.from_iterable(map(keys_of, listed))
