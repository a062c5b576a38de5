"""MariaDB/MySQL through PyMySQL: a read-only unit waits a bounded time for each part of a reply
(culm.storage.sql.mysql.READ_REPLY_SECONDS), a write unit as long as the server takes.

Session 20 (crash-control seed 32 on MariaDB, about half the runs under load): the test's operator
thread waited in read_snapshots, inside PyMySQL's recv, for the answer to a plain SELECT that the
server no longer had a statement for, and never came back. A reply that never comes is now a lost
connection (an outage, ``culm._retry.is_outage``) after READ_REPLY_SECONDS, and the next unit runs
on a fresh connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from backends import create_database, drop_database
from slow_link import SlowLink
from sqlalchemy.engine import make_url

from culm._retry import is_outage
from culm.storage.migrate import upgrade_database
from culm.storage.sql import SqlStore
from culm.storage.sql import mysql as culm_mysql

pytestmark = pytest.mark.timeout(120)
BOUND = 1.0  # READ_REPLY_SECONDS here


@pytest.fixture
def linked(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SqlStore, SlowLink]]:
    url = create_database("mariadb")
    if make_url(url).get_driver_name() != "pymysql":
        drop_database(url)
        pytest.skip("PyMySQL only: mysqlclient has no per-read timeout to change")
    upgrade_database(url)
    monkeypatch.setattr(culm_mysql, "READ_REPLY_SECONDS", BOUND)
    link = SlowLink("127.0.0.1", 3306, pause=0)
    store = SqlStore(link.url(url))
    try:
        yield store, link
    finally:
        link.cut()
        store.dispose()
        drop_database(url)


def _read(store: SqlStore) -> dict:
    with store.reading(snapshot=True) as unit:
        return unit.get_states(["no-such-node"])


def test_a_read_whose_answer_never_comes_fails_as_an_outage_and_the_next_runs_on_a_fresh_connection(
        linked: tuple[SqlStore, SlowLink]) -> None:
    store, link = linked
    assert _read(store) == {}  # a pooled connection, working
    link.swallow()  # from now on its answers go nowhere; the connection stays open
    errors: list[BaseException] = []

    def read() -> None:
        try:
            _read(store)
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    began = time.monotonic()
    thread.start()
    thread.join(30)
    waited = time.monotonic() - began
    alive = thread.is_alive()
    if alive:
        link.cut()  # let the stuck thread go
    assert not alive, "the read waited for an answer that never comes (30 s and counting)"
    assert errors and is_outage(errors[0]), errors
    assert "Lost connection to MySQL server during query (timed out)" in str(errors[0]), repr(errors[0])
    assert BOUND <= waited < 15, waited
    assert _read(store) == {}  # a fresh connection: the dead one left the pool


def test_a_write_unit_waits_as_long_as_its_statement_takes_and_a_read_does_not(
        linked: tuple[SqlStore, SlowLink]) -> None:
    store, _ = linked
    slow = f"SELECT SLEEP({3 * BOUND})"  # the server's own time: a write's lock wait, say
    with store.reading(snapshot=True) as unit:  # the pool's one connection, bounded for the read
        assert unit._all("SELECT SLEEP(0)")[0][0] == 0
    with store.transaction() as unit:  # the same connection, a write unit: no bound
        assert unit._all(slow)[0][0] == 0
    with pytest.raises(Exception) as caught, store.reading(snapshot=True) as unit:
        unit._all(slow)
    assert is_outage(caught.value) and "Lost connection" in str(caught.value), repr(caught.value)
    with store.reading() as unit:  # the plain reads' pool (autocommit) is bounded too
        with pytest.raises(Exception) as caught:
            unit._all(slow)
    assert is_outage(caught.value), repr(caught.value)
    assert _read(store) == {}


def test_the_pools_sqlalchemy_level_writes_get_the_urls_timeouts_after_a_read(
        linked: tuple[SqlStore, SlowLink]) -> None:
    """review20d: a snapshot read left its connection at READ_REPLY_SECONDS in the pool, and the
    token table's writes (``engine.begin()``, no unit of ours) then gave up after it with their
    statement still running on the server. A read unit puts the URL's timeouts back as it ends."""
    store, _link = linked
    with store.transaction():
        pass
    with store.engine.connect() as conn:
        given = (conn.connection.dbapi_connection._read_timeout, conn.connection.dbapi_connection._write_timeout)
    assert _read(store) == {}
    with store.engine.begin() as conn:  # what SqlTokenTable's writes and migrations do
        driver = conn.connection.dbapi_connection
        assert (driver._read_timeout, driver._write_timeout) == given
