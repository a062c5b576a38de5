"""A memo bounded by the memory its entries hold, not only by how many there are.

The caches of parsed templates, expressions and conditions were ``lru_cache``s of a fixed number of
entries; an entry's size depends on its text, so 1,024 distinct expressions of 3 KB each (one tree
of 3.5 MB) held 550 MB of syntax trees in every worker, for good. Each entry here carries a weight
(syntax nodes, pieces, names: what its memory grows with); the memo is emptied when the next entry
would take it past ``max_entries`` or ``max_weight``, and an entry heavier than an eighth of the
budget is returned without being kept.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class WeightedMemo(Generic[K, V]):
    """``{key: value}`` of at most ``max_entries`` entries and ``max_weight`` weight in all."""

    __slots__ = ("data", "weight", "max_entries", "max_weight", "_lock")

    def __init__(self, max_entries: int, max_weight: int) -> None:
        self.data: dict[K, V] = {}
        self.weight = 0
        self.max_entries = max_entries
        self.max_weight = max_weight
        self._lock = threading.Lock()

    def keep(self, key: K, value: V, weight: int) -> V:
        """Remember ``value`` for ``key`` (unless it alone weighs too much); returns ``value``."""
        if weight > self.max_weight // 8:
            return value
        with self._lock:
            if len(self.data) >= self.max_entries or self.weight + weight > self.max_weight:
                self.data.clear()
                self.weight = 0
            self.data[key] = value
            self.weight += weight
        return value

    def clear(self) -> None:
        with self._lock:
            self.data.clear()
            self.weight = 0

    def __len__(self) -> int:
        return len(self.data)
