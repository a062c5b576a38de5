"""What the database driver sends, recorded by round trip (tests that count round trips)."""

from __future__ import annotations

import threading

import pytest


def round_trips(kind: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every round trip the driver of ``kind`` ("postgres"/"postgresql" or "mariadb"/"mysql")
    makes from now on (until ``monkeypatch.undo()``): one entry each, its statements with their
    parameters. psycopg: a statement sent outside a pipeline, or a whole pipeline; PyMySQL: a
    query, multi-statement ones included (their parameters are quoted into the text)."""
    trips: list[str] = []
    if kind.startswith("postgres"):
        from contextlib import contextmanager

        import psycopg

        execute, pipeline = psycopg.Cursor.execute, psycopg.Connection.pipeline
        # Each connection's open pipeline, by the index of its trip: another thread's trips may
        # come between its statements (a runtime with several threads).
        open_trips: dict[int, int] = {}

        def counted_execute(self, query, params=None, **kw):
            sent = f"{query} {params!r}"
            if self.connection._pipeline is None:
                trips.append(sent)
            else:
                trips[open_trips[id(self.connection)]] += "\n" + sent  # one more statement of the pipeline's trip
            return execute(self, query, params, **kw)

        opening = threading.Lock()

        @contextmanager
        def counted_pipeline(self):
            with opening:
                trips.append("(pipeline)")
                outer, open_trips[id(self)] = open_trips.get(id(self)), len(trips) - 1
            try:
                with pipeline(self) as p:
                    yield p
            finally:
                if outer is None:
                    open_trips.pop(id(self), None)
                else:
                    open_trips[id(self)] = outer

        monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
        monkeypatch.setattr(psycopg.Connection, "pipeline", counted_pipeline)
    else:
        from pymysql.connections import Connection

        query = Connection.query

        def counted_query(self, sql, unbuffered=False):
            trips.append(sql)
            return query(self, sql, unbuffered)

        monkeypatch.setattr(Connection, "query", counted_query)
        mysqlclient = _mysqlclient_cursor()
        if mysqlclient is not None:  # the C driver's cursors send every query through _query
            sent = mysqlclient._query

            def counted_cursor_query(self, q):
                trips.append(q.decode() if isinstance(q, bytes) else q)
                return sent(self, q)

            monkeypatch.setattr(mysqlclient, "_query", counted_cursor_query)
    return trips


def rollbacks(monkeypatch: pytest.MonkeyPatch, trips: list[str]) -> None:
    """MySQL/MariaDB: also record each ROLLBACK the driver sends (PyMySQL or mysqlclient) in ``trips``."""
    from pymysql.connections import Connection

    drivers = [Connection]
    if _mysqlclient_cursor() is not None:
        from MySQLdb.connections import Connection as CConnection

        drivers.append(CConnection)
    for cls in drivers:
        rollback = cls.rollback
        monkeypatch.setattr(cls, "rollback", lambda self, rollback=rollback: (trips.append("ROLLBACK"), rollback(self))[1])


def _mysqlclient_cursor():
    try:
        from MySQLdb.cursors import BaseCursor
    except ImportError:
        return None
    return BaseCursor
