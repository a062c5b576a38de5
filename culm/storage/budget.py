"""What one root pipeline may store in all (:data:`culm.model.limits.MAX_PIPELINE_STORED_BYTES`).

A store checks a write of a node's payloads (its inputs and outputs, a history of them) against the
budget only when the write is over :data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes: then it
reads what the node's root pipeline holds already (one statement on a database) and refuses the
write when both together would be over. Ordinary writes cost nothing more.

Where counting reads every stored value (SQLite before 3.43 reads a text whole for its length: 1.4 s
for a pipeline holding 250 MB, with the file's write lock held), a store may pass ``root_of``: then
this process remembers each root's count for :data:`RECOUNT_AFTER` seconds and adds its own checked
writes to it, and counts again only when that estimate would be over the budget or too old. Writes
by other processes in that window are not seen, so several processes writing one pipeline at once
may pass the budget by what the others wrote in it; one embedded runtime sees every checked write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from culm.errors import StoredBytesBudgetError
from culm.model import limits

RECOUNT_AFTER = 5.0  # seconds a remembered count stands in for a new one (stores passing root_of)
_KEEP_AT_MOST = 1_000  # roots remembered; older ones are forgotten past it

_counted: dict[str, tuple[float, int]] = {}  # root id -> (when counted, bytes counted + added here since)
_counted_lock = threading.Lock()


def check(node_id: str, field: str, size: int, held: Callable[[], tuple[str, int, int]],
          root_of: Callable[[], str | None] | None = None) -> None:
    """Refuse a write of ``size`` bytes of ``field`` (``"inputs"``, ``"outputs"``, ``"history"``)
    of node ``node_id`` that would take its root pipeline past its budget. ``held()`` reads the
    root pipeline's id, the bytes it holds besides what the write replaces, and the bytes the
    write replaces: a write no larger than what it replaces is never refused (failing a node
    rewrites its stored inputs, and a pipeline at its budget can still fail, skip and finish).

    Raises:
        StoredBytesBudgetError: Naming the node, the size, what is held and the budget.
    """
    if size <= limits.STORED_BYTES_CHECK_AT:
        return
    budget = limits.MAX_PIPELINE_STORED_BYTES
    if root_of is not None and _fits_as_counted(root_of(), size, budget):
        return
    root_id, others, replaced = held()
    refused = size > replaced and others + size > budget
    if root_of is not None:
        _remember(root_id, others + (0 if refused else size))
    if refused:
        raise StoredBytesBudgetError(
            f"node {node_id}: storing its {field} ({size:,} bytes) would take pipeline {root_id} to "
            f"{others + size:,} bytes stored, over the {budget:,} one pipeline may store "
            "(culm.model.limits.MAX_PIPELINE_STORED_BYTES, $CULM_MAX_PIPELINE_STORED_BYTES)", field, [])


def _fits_as_counted(root_id: str | None, size: int, budget: int) -> bool:
    """Whether this process's recent count of ``root_id`` (plus its writes since) leaves room for
    ``size`` more bytes; if so the write is added to it."""
    if root_id is None:
        return False
    with _counted_lock:
        seen = _counted.get(root_id)
        if seen is None or time.monotonic() - seen[0] > RECOUNT_AFTER or seen[1] + size > budget:
            return False
        _counted[root_id] = (seen[0], seen[1] + size)
        return True


def _remember(root_id: str, counted: int) -> None:
    with _counted_lock:
        if len(_counted) >= _KEEP_AT_MOST:
            for old in sorted(_counted, key=lambda r: _counted[r][0])[: _KEEP_AT_MOST // 2]:
                del _counted[old]
        _counted[root_id] = (time.monotonic(), counted)
