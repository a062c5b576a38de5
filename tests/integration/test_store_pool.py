"""Pooled server connections: pinged when they sat unused, not on every transaction."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError
from test_faults import kill_sessions

from culm.storage.migrate import upgrade_database
from culm.storage.sql import base as sql  # where PING_AFTER_IDLE is read

pytestmark = pytest.mark.timeout(60)


def _node_known(store: sql.SqlStore) -> bool:
    with store.transaction() as unit:
        return unit.node_root("nope") is not None


def test_idle_pooled_connection_killed_by_the_server_is_replaced(server_database, monkeypatch):
    upgrade_database(server_database)
    store = sql.SqlStore(server_database)
    try:
        assert _node_known(store) is False  # one connection now waits in the pool
        killed, _ = kill_sessions(server_database, in_flight_timeout=0)
        assert killed >= 1
        monkeypatch.setattr(sql, "PING_AFTER_IDLE", 0.0)  # it has now been idle "long enough"
        assert _node_known(store) is False
    finally:
        store.dispose()


def test_connection_back_from_work_moments_ago_is_not_pinged(server_database, monkeypatch):
    upgrade_database(server_database)
    store = sql.SqlStore(server_database)
    try:
        assert _node_known(store) is False
        kill_sessions(server_database, in_flight_timeout=0)
        monkeypatch.setattr(sql, "PING_AFTER_IDLE", 3600.0)
        # Not pinged, so the dead connection reaches the statement: the error the worker retries.
        with pytest.raises((DBAPIError, store.engine.dialect.loaded_dbapi.Error)):
            _node_known(store)
        assert _node_known(store) is False  # the broken one was dropped from the pool
    finally:
        store.dispose()
