"""Where a reader of the change feed stands, when rows may become visible out of ``seq`` order.

The database hands out ``seq`` when a change row is inserted, right before its transaction
commits. With one writer at a time (SQLite, the memory store) rows become visible in ``seq``
order: what a read did not see below its upper bound will never be there. On PostgreSQL and MySQL
two writers can commit the other way round (a reader may see seq 11 before seq 10), and a
rolled-back transaction leaves a hole that never fills. So a reader keeps re-reading the rows
after its position, and moves past a seq only once every lower one has been seen, or ``settle``
seconds after it first saw that seq (a hole that old is taken for a rolled-back write).

Two readers use this: the change feed's iterator (``culm.storage.feed``) and the kept state trees
(``culm.core.state_tree``). Each row is reported as new exactly once.
"""

from __future__ import annotations


class FeedCursor:
    """A reader's position in the feed: every seq up to :attr:`position` is seen or given up.

    Use: read the rows with ``position < seq <= upto``; ask :meth:`first_sight` of each (True the
    first time a seq comes by); then :meth:`read_upto` with the read's upper bound.

    ``ordered``: rows become visible in seq order. ``contiguous``: the reader reads every row (not
    one root's), so a run of seen seqs without holes needs no waiting.
    """

    def __init__(self, after: int, *, ordered: bool, contiguous: bool, settle: float) -> None:
        self.position = after
        self._ordered = ordered
        self._contiguous = contiguous
        self._settle = settle
        self._seen: dict[int, float] = {}  # seqs above the position already reported -> when first read
        self._covered: list[tuple[int, float]] = []  # (seq every read reached up to, when first read so)

    @property
    def unsettled(self) -> bool:
        """Seqs above the position were seen: come back to move past them once they settle."""
        return not self._ordered and bool(self._seen)

    def first_sight(self, seq: int, at: float) -> bool:
        """True the first time ``seq`` is read (at ``at``, a monotonic time)."""
        if seq <= self.position or seq in self._seen:
            return False
        self._seen[seq] = at
        return True

    def read_upto(self, upto: int, at: float) -> None:
        """A read covered every seq up to ``upto`` at ``at``: move the position past the seqs
        below which no change can still appear."""
        self._covered.append((upto, at))
        if self._ordered:  # what a read did not see below its upper bound will never be there
            self.position = max(self.position, upto)
            self._covered.clear()
            self._seen.clear()
            return
        position = self.position
        # A seq read `settle` ago: a hole below it is a rolled-back write, not a late commit.
        settled = [s for s, first in [*self._seen.items(), *self._covered] if at - first >= self._settle]
        if settled:
            position = max(position, *settled)
        if self._contiguous:  # every seq is ours to see: a run without holes needs no waiting
            while position + 1 in self._seen:
                position += 1
        for s in [s for s in self._seen if s <= position]:
            del self._seen[s]
        self._covered[:] = [(s, first) for s, first in self._covered if s > position]
        self.position = position
