"""The memory store's tables and a transaction's copy-on-write view of them (see
:mod:`culm.storage.memory`, whose units add the domain verbs on top).

Committed rows live in :class:`Table` objects, keyed by primary key, with secondary indexes. A
transaction never changes them: it writes into layers of its own (a savepoint is one more layer)
and :meth:`TransactionView.commit` folds the layers in at once, under the store's lock. Rows are
records or tuples that nobody changes in place once written: an update writes a new row.
"""

from __future__ import annotations

import contextlib
import operator
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from culm.core.records import StateChange
from culm.errors import CulmError

_GONE = object()  # a row deleted in a transaction layer


class MemoryStoreError(CulmError):
    """A write the store refuses: a duplicate key, a row that is not there, a lost transaction."""


# Tables: name -> {index name: the row's value for it}. Rows are keyed by their primary key.
TABLES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "pipeline": {},
    "node": {"root": operator.itemgetter(1)},  # (id, root_id, pipeline_id, type)
    "state": {"root": operator.attrgetter("root_id"), "parent": operator.attrgetter("parent_id")},
    "process": {"root": operator.attrgetter("root_id"), "suspended_by": operator.attrgetter("suspended_by"),
                "at": operator.attrgetter("current_node_id")},
    "task": {"root": lambda t: t.rec.root_id, "process": lambda t: t.rec.process_id},
    "node_data": {},  # node_id -> inputs text
    "execution_data": {},  # node_id -> (inputs text, outputs text)
    "context": {"pipeline": operator.itemgetter(0)},  # (pipeline_id, key) -> (pipeline_id, type, text, code, refs)
    "schedule": {"node": operator.attrgetter("node_id")},
    "callback": {"node": operator.itemgetter(0)},  # id -> (node_id, version, data text, seq)
    "history": {"node": operator.itemgetter(0)},  # id -> (node_id, HistoryRecord, inputs text, outputs text)
    "log": {"node": operator.itemgetter(0)},  # id -> (node_id, version, loop, created_time, line)
}


class Table:
    """The committed rows of one table, by primary key, with its indexes (insertion-ordered, so
    every scan comes out in the same order on every run: simulations replay exactly)."""

    __slots__ = ("indexes", "next_id", "rows")

    def __init__(self, indexes: dict[str, Callable[[Any], Any]]) -> None:
        self.rows: dict[Any, Any] = {}
        self.indexes: dict[str, tuple[Callable[[Any], Any], dict[Any, dict[Any, None]]]] = {
            name: (value, {}) for name, value in indexes.items()}
        self.next_id = 1  # autoincrement keys (histories, logs)

    def put(self, key: Any, row: Any) -> None:
        old = self.rows.get(key)
        for value, index in self.indexes.values():
            if old is not None:
                index[value(old)].pop(key, None)
            index.setdefault(value(row), {})[key] = None
        self.rows[key] = row

    def delete(self, key: Any) -> None:
        old = self.rows.pop(key, None)
        if old is not None:
            for value, index in self.indexes.values():
                index[value(old)].pop(key, None)

    def keys_by(self, index: str, value: Any) -> Iterable[Any]:
        return self.indexes[index][1].get(value, {}).keys()


class Feed:
    """The committed change feed: rows in seq order (seqs are handed out at commit, under the lock)."""

    __slots__ = ("next_seq", "rows", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.rows: list[StateChange] = []
        self.next_seq = 1

    def between(self, after: int, upto: int) -> list[StateChange]:
        return self.rows[bisect_right(self.seqs, after) : bisect_right(self.seqs, upto)]


class Database:
    """What a crash keeps: the committed tables and feed."""

    def __init__(self) -> None:
        self.tables = {name: Table(indexes) for name, indexes in TABLES.items()}
        self.feed = Feed()
        self.epoch = 0  # moves at every reopen: transactions of an older epoch are lost


class TransactionView:
    """A transaction's view of a :class:`Database`: the committed rows under its own layers."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._epoch = db.epoch
        self._tables = db.tables
        self._layers: list[dict[str, dict[Any, Any]]] = [{}]
        self._changes: list[tuple[str, str, str | None, str, str, int, float]] = []
        self._pruned: list[int] = []  # seqs of committed feed rows this transaction deletes
        self.changes_sent = 0

    def _get(self, table: str, key: Any) -> Any:
        for layer in reversed(self._layers):
            rows = layer.get(table)
            if rows is not None and key in rows:
                row = rows[key]
                return None if row is _GONE else row
        return self._tables[table].rows.get(key)

    def _put(self, table: str, key: Any, row: Any) -> None:
        self._layers[-1].setdefault(table, {})[key] = row

    def _delete(self, table: str, key: Any) -> None:
        self._layers[-1].setdefault(table, {})[key] = _GONE

    def _insert(self, table: str, key: Any, row: Any) -> None:
        if self._get(table, key) is not None:
            raise MemoryStoreError(f"table {table} already has a row {key!r}")
        self._put(table, key, row)

    def _written_keys(self, table: str) -> dict[Any, None]:
        keys: dict[Any, None] = {}
        for layer in self._layers:
            keys.update(dict.fromkeys(layer.get(table, ())))
        return keys

    def _where(self, table: str, index: str, value: Any) -> list[tuple[Any, Any]]:
        """(key, row) of the rows whose ``index`` value is ``value``, as this transaction sees them."""
        base = self._tables[table]
        keys = dict.fromkeys(base.keys_by(index, value))
        keys.update(self._written_keys(table))
        get = base.indexes[index][0]
        return [(k, row) for k in keys if (row := self._get(table, k)) is not None and get(row) == value]

    def _scan(self, table: str) -> list[tuple[Any, Any]]:
        keys = dict.fromkeys(self._tables[table].rows)
        keys.update(self._written_keys(table))
        return [(k, row) for k in keys if (row := self._get(table, k)) is not None]

    def _next_id(self, table: str) -> int:
        t = self._tables[table]
        t.next_id += 1  # under the store's lock; a rolled-back id is skipped, as a sequence's is
        return t.next_id - 1

    def commit(self) -> None:
        """Fold this transaction's layers and change rows into the committed database."""
        if self._epoch != self._db.epoch:
            raise MemoryStoreError("the store was reopened (a simulated crash): this transaction is lost")
        (layer,) = self._layers
        for table, rows in layer.items():
            committed = self._tables[table]
            for key, row in rows.items():
                if row is _GONE:
                    committed.delete(key)
                else:
                    committed.put(key, row)
        feed = self._db.feed
        if self._pruned:
            gone = set(self._pruned)
            kept = [c for c in feed.rows if c.seq not in gone]
            feed.rows, feed.seqs = kept, [c.seq for c in kept]
        for change in self._changes:
            feed.seqs.append(feed.next_seq)
            feed.rows.append(StateChange(feed.next_seq, *change))
            feed.next_seq += 1
        self.changes_sent += len(self._changes)
        self._layers, self._changes, self._pruned = [{}], [], []

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested unit: its changes are undone on an exception, the outer transaction's are not."""
        self._layers.append({})
        changes, pruned = len(self._changes), len(self._pruned)
        try:
            yield
        except BaseException:
            self._layers.pop()
            del self._changes[changes:]
            del self._pruned[pruned:]
            raise
        top = self._layers.pop()
        below = self._layers[-1]
        for table, rows in top.items():
            below.setdefault(table, {}).update(rows)

