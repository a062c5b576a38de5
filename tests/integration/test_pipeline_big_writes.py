"""PostgreSQL: a transaction whose pipelined writes are bigger than the socket buffers commits.

psycopg 3.3.9's Connection.commit() inside a pipeline flushes once and then only waits to read: the
rest of a big message stayed in the client's buffer, the server waited for it (pg_stat_activity:
active, ClientRead) and the worker for answers, for ever (CI, session 17: the hostile-expression
and node-timeout tests on postgres-redis). A slow link with small buffers (slow_link.SlowLink)
makes every such message outgrow what the link holds, so the hang was certain here, not a matter
of load; PostgresUnit now sends its commit as a statement of the pipeline instead.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
from backends import create_database, drop_database
from slow_link import SlowLink
from sqlalchemy import event

from culm.core.records import StateRecord
from culm.storage.migrate import upgrade_database
from culm.storage.sql import SqlStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def slow_store():
    url = create_database("postgres")
    upgrade_database(url)
    link = SlowLink("127.0.0.1", 5432)
    store = SqlStore(link.url(url))

    @event.listens_for(store.engine, "connect")
    def small_send_buffer(dbapi_conn, _record):  # the client's side of the link holds little too
        sock = socket.socket(fileno=os.dup(dbapi_conn.fileno()))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.close()  # the duplicate only

    store.engine.dispose()  # connections made before the listener: gone

    yield store, link
    link.cut()
    store.dispose()
    drop_database(url)


def _within(seconds: float, what, link: SlowLink) -> None:
    """Run ``what`` on a thread; a hang past ``seconds`` cuts the link (the thread then fails) and fails."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            what()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        link.cut()
        thread.join(10)
        pytest.fail(f"the transaction hung for {seconds} s (pipelined commit left its message half sent)")
    if errors:
        raise errors[0]


# 300 kB: below the 1 MB of session 17's mitigation (big writes sent one statement at a time),
# which still hung on this link; 4 MB: a node's inputs near the payload limit, as on CI.
@pytest.mark.parametrize("size", [300_000, 4_000_000])
def test_a_commit_of_writes_bigger_than_the_link_holds_finishes(slow_store, size):
    store, link = slow_store
    big = "x" * size

    def write() -> None:
        with store.transaction() as unit:
            unit.insert_state(StateRecord("n", "root", "root", "RUNNING", "v1", created_time=1.0))
            unit.set_execution_data("n", {"big": big}, {"done": True})

    _within(20, write, link)
    with store.reading() as unit:
        inputs, outputs = unit.get_execution_data("n")
    assert inputs == {"big": big} and outputs == {"done": True}
