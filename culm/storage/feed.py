"""The state-change feed: what the writers append to ``culm_change``, read back in order.

Every state write appends a row in the writer's own transaction (``SqlUnit.record_change``; the
rows go out with the commit), so the feed is exactly as durable as the states it records, and any
process that reads the database sees it: a second process on a SQLite file, the submitter of a
cluster whose ``culm worker`` processes do the writing.

Order. The database hands out ``seq`` when a row is inserted, right before its transaction
commits. On SQLite one writer holds the database at a time, so rows become visible in ``seq``
order. On PostgreSQL and MySQL two writers can commit the other way round: a reader may see seq 11
before seq 10, and a rolled-back transaction leaves a hole that never fills. So a reader keeps
re-reading the rows after a cursor it moves past a seq only once every lower one has been seen, or
:data:`SETTLE` seconds after it first saw that seq. Each change is yielded once; on server
databases, rarely, out of ``seq`` order (:class:`culm.core.feed_cursor.FeedCursor` keeps the count).

Notes. A row whose ``from_state`` equals its ``to_state`` is no transition (the transition table
has none from a state to itself): it tells the kept state trees (:mod:`culm.core.state_tree`) that
a state row changed in a field the feed does not carry (``Step.note``: inner loops reset when a
subprocess is entered again; an appointed pause's row written by an older version joining its
root), or that what a node's wait reason is read from moved without a state write (a schedule
created, a poll counted or a schedule ended; a branch that parks, ends or is counted at its
converge gateway: :class:`culm.core.waits.KeptFacts`). :meth:`ChangeFeed.changes` and
:meth:`ChangeFeed.wait` skip notes.

Waking. A commit by this process wakes the readers of the same store at once (the embedded
engine); other readers poll the primary key, backing off from :data:`POLL_MIN` to
:data:`POLL_MAX` seconds while nothing happens.

Retention. :meth:`ChangeFeed.prune` deletes the rows, older than a given age, of pipelines that
are FINISHED or REVOKED (so nobody waits on them any more). It always keeps the newest row:
SQLite hands out ``max(seq) + 1`` next, so keeping it means no seq is ever handed out twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from culm.core import states
from culm.core.feed_cursor import FeedCursor
from culm.core.records import StateChange, Transition
from culm.errors import NotFoundError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


class _Store(Protocol):
    """What the feed reads through: a store's read-only units (``SqlStore``, ``MemoryStore``)."""

    def reading(self) -> AbstractContextManager[Any]: ...

    def transaction(self) -> AbstractContextManager[Any]: ...

BATCH = 1000  # rows per read
PRUNE_CHUNK = 20_000  # seqs per pruning transaction (short locks on server databases)
SETTLE = 1.0  # seconds after which a hole below a seen seq is taken for a rolled-back write
POLL_MIN, POLL_MAX = 0.002, 0.05
# Without an index by root (the memory store), one root's history is read from the first change
# written this long before the pipeline was created (clocks of several hosts disagree a little)
# when that skips many rows. The SQL stores read it through ix_culm_change_root_seq (0006).
CLOCK_SKEW = 60.0
FAR_BEHIND = 10_000
FINAL_STATES = frozenset({states.FINISHED, states.REVOKED})


class ChangeFeed:
    """Reads a store's change feed; one per store (``store.feed``).

    ``ordered``: rows become visible in seq order (one writer at a time: SQLite, the memory store).
    ``indexed_by_root``: the store reads one root's changes through an index (the SQL stores,
    ``ix_culm_change_root_seq``), so a root's history needs no start found by time.
    """

    def __init__(self, store: _Store, *, ordered: bool, indexed_by_root: bool = False) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._generation = 0  # moves at every commit of this process that recorded changes
        self._waiters = 0
        # One writer at a time: rows become visible in seq order, no holes to wait out.
        self._ordered = ordered
        self._indexed_by_root = indexed_by_root

    # -- writers ------------------------------------------------------------------------------
    def committed(self) -> None:
        """Called after a commit of this process that recorded changes: wake the readers."""
        self._generation += 1
        if self._waiters:
            with self._cond:
                self._cond.notify_all()

    # -- readers ------------------------------------------------------------------------------
    def last_seq(self) -> int:
        """The highest seq recorded so far (0 when none)."""
        with self._store.reading() as unit:
            return int(unit.last_change_seq())

    def read(self, after: int, upto: int, root_id: str | None = None, limit: int = BATCH) -> list[StateChange]:
        """Up to ``limit`` changes with ``after`` < seq <= ``upto`` (of one root when given), in seq
        order."""
        with self._store.reading() as unit:
            return list(unit.read_changes(after, upto, root_id, limit))

    def transitions(self, root_id: str | None = None, after: int = 0) -> tuple[list[Transition], int]:
        """The state transitions recorded (notes left out) after seq ``after`` (of one root when
        given), in seq order, and the last seq read (to pass as ``after`` next time) -- for the invariant checker.

        Call it once the writers are quiet: on a server database a write still committing may take
        a seq below one already read.
        """
        upto = self.last_seq()
        found: list[Transition] = []
        while after < upto:
            batch = self.read(after, upto, root_id)
            if not batch:
                break
            # A note (from_state == to_state) is no transition (see the module docstring).
            found += [Transition(c.node_id, c.from_state, c.to_state) for c in batch if c.from_state != c.to_state]
            after = batch[-1].seq
        return found, upto

    def changes(
        self, root_id: str | None = None, after: int = 0, timeout: float | None = None
    ) -> Iterator[StateChange]:
        """Changes with seq > ``after``, blocking for new ones until ``timeout`` seconds have
        passed since the call (None: forever); then the iterator ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        start = after
        if root_id is not None and not self._indexed_by_root:
            start = max(start, self._history_start(root_id, after))
        # Every seq up to cursor.position is yielded or given up (culm.core.feed_cursor).
        cursor = FeedCursor(start, ordered=self._ordered, contiguous=root_id is None, settle=SETTLE)
        idle = 0
        while True:
            generation = self._generation
            last = self.last_seq()
            rows = self.read(cursor.position, last, root_id) if last > cursor.position else []
            at = time.monotonic()
            fresh = 0
            for change in rows:
                if cursor.first_sight(change.seq, at):
                    fresh += 1
                    if change.from_state != change.to_state:  # a note is for the state trees only
                        yield change
            full = len(rows) >= BATCH
            cursor.read_upto(rows[-1].seq if full else last, at)
            if full and fresh:
                continue  # more are waiting
            idle = 0 if fresh else idle + 1
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            pause = min(POLL_MAX, POLL_MIN * (2 ** min(idle, 10)))
            if cursor.unsettled:
                pause = min(pause, SETTLE / 4)  # come back to move the cursor past settled seqs
            self._sleep(generation, pause if remaining is None else min(pause, remaining))

    def _history_start(self, root_id: str, after: int) -> int:
        """A seq below the first change of ``root_id``: found by time when that skips many rows
        (a store without an index by root would otherwise read every change since ``after``)."""
        last = self.last_seq()
        if last - after <= FAR_BEHIND:
            return after
        with self._store.reading() as unit:
            created = unit.pipeline_created(root_id)
            if created is None:
                return after
            since = float(created) - CLOCK_SKEW
            lo, hi = max(after, 0), last  # times grow with seq, give or take the skew allowed for
            while lo < hi:
                mid = (lo + hi + 1) // 2
                found = unit.change_time_from(mid)
                if found is not None and float(found) < since:
                    lo = mid
                else:
                    hi = mid - 1
        return lo

    def _sleep(self, generation: int, timeout: float) -> None:
        with self._cond:
            self._waiters += 1
            try:
                self._cond.wait_for(lambda: self._generation != generation, timeout)
            finally:
                self._waiters -= 1

    def wait(self, pipeline_id: str, timeout: float | None = None) -> str:
        """Block until ``pipeline_id`` is FINISHED or REVOKED; returns that state.

        Raises:
            NotFoundError: no pipeline has that id.
            TimeoutError: it is still not final after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._store.reading() as unit:
            root_id = unit.node_root(pipeline_id)
        if root_id is None:
            raise NotFoundError(f"pipeline {pipeline_id} does not exist")
        # On server databases a change committed after our reads may carry a seq below the one
        # we start after (see the module docstring), so the state is read again every SETTLE.
        recheck = None if self._ordered else SETTLE
        while True:
            after = self.last_seq()
            state = self._state(pipeline_id)
            if state in FINAL_STATES:
                return state
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"pipeline {pipeline_id} is still {state or 'not started'} after {timeout} s")
            span = remaining
            if recheck is not None:
                span = recheck if remaining is None else min(recheck, remaining)
            for change in self.changes(root_id, after, span):
                if change.node_id == pipeline_id and change.to_state in FINAL_STATES:
                    return change.to_state

    def _state(self, node_id: str) -> str | None:
        with self._store.reading() as unit:
            st = unit.get_state(node_id)
        return st.name if st is not None else None

    # -- retention ----------------------------------------------------------------------------
    def prune(self, older_than: float) -> int:
        """Delete the changes older than ``older_than`` seconds of FINISHED or REVOKED pipelines
        (the newest row always stays); returns how many rows went."""
        cutoff = time.time() - older_than
        with self._store.reading() as unit:
            first, last = unit.first_change_seq(), unit.last_change_seq()
        if first is None:
            return 0
        deleted = 0
        for lo in range(int(first), int(last), PRUNE_CHUNK):
            with self._store.transaction() as unit:
                deleted += unit.prune_changes(lo, min(lo + PRUNE_CHUNK, int(last)), cutoff)
        return deleted
