"""What one root pipeline may store in all (:data:`culm.model.limits.MAX_PIPELINE_STORED_BYTES`).

What a root pipeline stores (its nodes' execution data, inputs overrides, histories, callback data
and log lines, its pipelines' context values) is counted by the database itself: triggers add each
write's bytes to the root's counter rows in the writing transaction (revision 0010, see
``culm_root_bytes`` in :mod:`culm.storage.schema`), so the count is exact whichever process wrote,
and survives a crash with the writes it counts.

A store checks a write of a node's payloads against the budget only when the write is over
:data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes, or when the caller asks for the check
whatever the size (a retry's history, each callback of a node taking many, the growth of an
operator's context update, see :func:`growth`): it reads the root's counter (a few rows by
primary key, however much the pipeline holds: what was committed before and this transaction's own
writes) and refuses the write when the bytes held plus the write would be over. A write of
another transaction still in flight is not seen, so every check of one pipeline (a callback's to
any node, a context update's, and the engine's own: two branches of a parallel gateway written by
two batches or two workers at once) takes its budget lock first and holds it to the commit
(``SqlUnit.stored_bytes``): each sees what the one before stored. The engine's writes of at most
STORED_BYTES_CHECK_AT bytes checked whatever their size do not (:func:`serialised`). Ordinary writes cost nothing
more: the triggers count them inside the database, with no statement of their own, and take no lock. When :data:`~culm.model.limits.MAX_STORED_BYTES` is
set, such a write is also refused when every pipeline together would hold more (:class:`StoreTotal`:
the sum of every counter row, read again only near that bound or once a second).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from culm.errors import StoredBytesBudgetError, UnstorableValueError
from culm.model import limits
from culm.storage import codec


def check(node_id: str, field: str, size: int, held: Callable[[], tuple[str, int, int]],
          total: Callable[[int], int] | None = None, *, always: bool = False, what: str = "node") -> None:
    """Refuse a write of ``size`` bytes of ``field`` (``"inputs"``, ``"outputs"``, ``"history"``,
    ``"callback data"``)
    of node ``node_id`` that would take its root pipeline past its budget, or every pipeline
    together past :data:`~culm.model.limits.MAX_STORED_BYTES` when that is set. ``held()`` reads the
    root pipeline's id, the bytes it holds besides what the write replaces, and the bytes the
    write replaces: a write no larger than what it replaces is never refused (failing a node
    rewrites its stored inputs, and a pipeline at its budget can still fail, skip and finish).
    ``total(grows)`` tells the bytes every pipeline would hold once the write adds ``grows``
    (:meth:`StoreTotal.after`). A write of at most
    :data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes is checked only when ``always`` (what
    can come in a storm of small writes, such as the callbacks of a node taking many: they passed
    any budget; a run's single callback is not, so a pipeline at its budget still takes it).
    ``what`` is what ``node_id`` is, for the message: ``"pipeline"`` for a pipeline's context values.

    Raises:
        StoredBytesBudgetError: Naming the node, the size, what is held and the budget.
    """
    if size <= limits.STORED_BYTES_CHECK_AT and not always:
        return
    budget = limits.MAX_PIPELINE_STORED_BYTES
    root_id, others, replaced = held()
    subject = f"{what} {node_id}"
    if size > replaced and others + size > budget:
        raise StoredBytesBudgetError(
            f"{subject}: storing its {field} ({size:,} bytes) would take "
            f"{'it' if node_id == root_id else f'pipeline {root_id}'} to "
            f"{others + size:,} bytes stored, over the {budget:,} one pipeline may store "
            "(culm.model.limits.MAX_PIPELINE_STORED_BYTES, $CULM_MAX_PIPELINE_STORED_BYTES)",
            field,
            [],
        )
    everything = limits.MAX_STORED_BYTES
    if everything and total is not None and size > replaced and (after := total(size - replaced)) > everything:
        raise StoredBytesBudgetError(
            f"{subject if node_id == root_id else f'{subject} of pipeline {root_id}'}: storing its {field} "
            f"({size:,} bytes) would take the "
            f"store to {after:,} bytes stored, over the {everything:,} all pipelines may store "
            "(culm.model.limits.MAX_STORED_BYTES, $CULM_MAX_STORED_BYTES)",
            field,
            [],
        )


def serialised(size: int) -> bool:
    """Whether the check of a ``size``-byte write of the engine takes its pipeline's budget lock
    (``SqlUnit.stored_bytes(serialise=...)``): only past
    :data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes. A smaller write checked because the
    caller asks (``always``: a loop's histories, a poll's log lines) is checked without it: it may
    pass the budget by one such write per transaction in flight, and a node loop does not take the
    lock at each iteration, after its batch's earlier counted writes (the lock-order deadlocks
    ``SqlUnit.stored_bytes`` describes: a 10-iteration loop took it 9 times, review of session 20)."""
    return size > limits.STORED_BYTES_CHECK_AT


def check_context_growth(unit: Any, pipeline_id: str, replaced: Sequence[object], values: Sequence[object]) -> None:
    """Refuse context ``values`` written in place of ``replaced`` that would take pipeline
    ``pipeline_id``'s root past its budget (or every pipeline past theirs), whatever their size.
    ``unit``: a store's unit, with ``stored_bytes`` and ``stored_total_after``."""
    if (size := growth(replaced, values)) > 0:
        # Its transaction has written nothing counted yet: it may wait for the budget lock.
        check(pipeline_id, "context values", size, lambda: unit.stored_bytes(pipeline_id, serialise=True),
              unit.stored_total_after,
              always=True, what="pipeline")


def check_context_copy(unit: Any, pipeline_id: str, size: int, replaced: Callable[[], int]) -> None:
    """Refuse the engine's copy of ``size`` bytes of values into pipeline ``pipeline_id``'s context
    (a node's outputs, by the tree's output mapping), past
    :data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes, when what they add over the values
    they replace (``replaced()``: their stored bytes, read only then) would take its root past its
    budget. The mapping is the template's: 40 variables taking one node's 1 MB output stored 40 MB
    more, unchecked, past a 20 MB budget (session 19), and a tree may name thousands."""
    if size <= limits.STORED_BYTES_CHECK_AT:
        return

    def held() -> tuple[str, int, int]:
        root_id, stored, _own = unit.stored_bytes(pipeline_id, serialise=True)
        old = replaced()
        return root_id, stored - old, old

    check(pipeline_id, "context values", size, held, unit.stored_total_after, what="pipeline")


class UnitChecks:
    """The budget checks a store's unit offers the engine (culm.core.ports.Unit), written once for
    the SQL and memory units: they read ``stored_bytes`` and ``stored_total_after``."""

    def stored_bytes(self, node_id: str, replacing: str | None = None, *,
                     serialise: bool = False) -> tuple[str, int, int]:
        raise NotImplementedError

    def stored_total_after(self, grows: int, *, counted: int = 0) -> int:
        raise NotImplementedError

    def check_logs(self, node_id: str, size: int, *, always: bool = False) -> None:
        """Raises StoredBytesBudgetError when ``size`` bytes of log lines of ``node_id`` would not
        fit (checked past STORED_BYTES_CHECK_AT bytes, or whatever the size when ``always``)."""
        check(node_id, "log lines", size, lambda: self.stored_bytes(node_id, serialise=serialised(size)),
              self.stored_total_after, always=always)

    def check_new_pipeline(self, root_id: str) -> None:
        """Raises StoredBytesBudgetError when the new run ``root_id`` written in this transaction
        would take every pipeline past MAX_STORED_BYTES (:func:`check_new_pipeline`)."""
        check_new_pipeline(self, root_id)


def check_new_pipeline(unit: Any, root_id: str) -> None:
    """Refuse a new run, root pipeline ``root_id`` just written in ``unit`` (its context values are
    what it holds), that would take every pipeline together past
    :data:`~culm.model.limits.MAX_STORED_BYTES` (when set): else a storm of runs each presetting
    megabytes of context filled the store however it was bounded. ``unit``: a store's unit, with
    ``stored_bytes`` and ``stored_total_after``."""
    if not limits.MAX_STORED_BYTES:
        return
    _root, held, _own = unit.stored_bytes(root_id)
    if held > 0:
        check(root_id, "context values", held, lambda: (root_id, 0, 0),
              lambda grows: unit.stored_total_after(grows, counted=held), always=True, what="pipeline")


def growth(replaced: Iterable[object], values: Iterable[object]) -> int:
    """The bytes ``values`` take over ``replaced`` once stored, each measured as the store writes it
    (:func:`culm.storage.codec.dumps`: escaped JSON, so 6 bytes a CJK character and 12 an emoji,
    or a pickled envelope). A value the codec refuses counts 0: its write is refused, naming it."""
    return sum(map(_stored_size, values)) - sum(map(_stored_size, replaced))


def _stored_size(value: object) -> int:
    try:
        return len(codec.dumps(value))
    except UnstorableValueError:
        return 0


# StoreTotal: a process reads every pipeline's counter rows again when its last read is older than
# this, or when a write would leave less than 1/TOTAL_SLACK_SHARE of MAX_STORED_BYTES free.
TOTAL_FRESH_SECONDS = 1.0
TOTAL_SLACK_SHARE = 8


class StoreTotal:
    """What every root pipeline of one store holds together, for
    :data:`~culm.model.limits.MAX_STORED_BYTES`, as this process last read it (the sum of every
    counter row: one statement over as many rows as the pipelines have counters, 16 a pipeline on
    a server) plus what the writes it let through since then add.

    Summing at every checked write made each cost grow with the number of pipelines stored. The
    sum is read again when the last read is over :data:`TOTAL_FRESH_SECONDS` old, or when the
    write would leave less than 1/:data:`TOTAL_SLACK_SHARE` of the bound free: near the bound the
    check is as exact as a read at every write; far from it, the store can pass the bound only if
    other processes (or this one's unchecked writes, at most ``STORED_BYTES_CHECK_AT`` bytes each)
    store more than that share of it within one such second. A write refused, or rolled back,
    after it was added here counts until the next read (the estimate errs high, never low).
    """

    def __init__(self) -> None:
        self._seen: tuple[float, int] = (float("-inf"), 0)  # (monotonic time of the read, bytes)
        # The engine threads of a process share one: an unlocked read-modify-write of _seen lost
        # the growth of writes let through at the same time. Not held over read() (a statement).
        self._lock = threading.Lock()

    def after(self, read: Callable[[], int], grows: int) -> int:
        """The bytes all pipelines would hold once a write adds ``grows``; ``read()`` sums them."""
        bound = limits.MAX_STORED_BYTES
        with self._lock:
            (at, known), now = self._seen, time.monotonic()
            if now - at < TOTAL_FRESH_SECONDS and known + grows <= bound - bound // TOTAL_SLACK_SHARE:
                self._seen = (at, known + grows)
                return known + grows
        known = read()
        with self._lock:
            self._seen = (now, known + grows)
        return known + grows
