"""PostgreSQL plans that stay right as culm's tables grow: reads by a list of ids send one text
whatever the number of ids (so psycopg prepares each once per connection), and culm analyses its
tables as they double when the server does not (autovacuum off), so that no cached plan keeps
the sequential scan it got while a table was small."""

from __future__ import annotations

import pytest
from backends import create_database, drop_database
from driver_log import round_trips
from sqlalchemy import create_engine, text
from support import wait_until

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.core.records import EXECUTE, ContextValue, ProcessRecord, StateRecord, TaskRecord
from culm.storage.migrate import upgrade_database
from culm.storage.sql import SqlStore
from culm.storage.sql.postgres import _ANALYZE_LOCK, ANALYZE_FROM

pytestmark = pytest.mark.timeout(120)

LEASE = ("me", 2e9, 1e9)  # owner, until, now


@pytest.fixture
def url():
    url = create_database("postgres")
    upgrade_database(url)
    yield url
    drop_database(url)


@pytest.fixture
def store(url):
    s = SqlStore(url)
    yield s
    s.dispose()


def _state(node_id: str, parent: str = "root") -> StateRecord:
    return StateRecord(node_id, "root", parent, "RUNNING", "v1", created_time=1.0)


def _texts(trips: list[str]) -> list[str]:
    """The statements' texts of the recorded round trips, parameters left out."""
    return [line.split(" [", 1)[0] for trip in trips for line in trip.splitlines() if line != "(pipeline)"]


def test_reads_by_a_list_of_ids_send_one_text_whatever_the_number_of_ids(store, monkeypatch):
    with store.transaction() as unit:
        unit.insert_state(_state("root", ""))
        unit.insert_state(_state("h1"))
        for i in range(8):
            unit.insert_state(_state(f"s{i}"))
        unit.insert_context("root", [ContextValue("${a}", "plain", 1)])
        unit.insert_processes([ProcessRecord(f"p{i}", "root", None, f"s{i}", None, ["root"]) for i in range(8)])
        unit.insert_tasks([TaskRecord(f"t{i}", EXECUTE, f"p{i}", f"s{i}", "root", due=0.0, running_version="v1")
                           for i in range(8)])
    sent = []
    for held, nodes, pipelines, fresh in ((["root"], ["s0", "s1"], ["root"], ["t0", "t1"]),
                                          (["root", "h1"], ["s2", "s3", "s4", "gone"], ["root", "none"],
                                           ["t2", "t3", "t4"])):
        with store.transaction() as unit:
            trips = round_trips("postgres", monkeypatch)
            unit.read_tasks_ahead(fresh, [], LEASE)
            unit.read_walks_ahead(held, nodes, pipelines)
            monkeypatch.undo()
            sent.append(_texts(trips))
            assert {t.id for t, _ in unit.tasks_read_ahead()} == set(fresh)
            assert set(unit.hold_states(held)) == set(held)
            assert set(unit.get_states(nodes)) == set(nodes) - {"gone"}
            assert {k: v.value for k, v in unit.get_context("root").items()} == {"${a}": 1}
    assert len(sent[0]) == 2 and sent[0] == sent[1], sent  # the claim and the walks' read, same texts
    with store.transaction() as unit:  # the resumed tasks' read too
        trips = round_trips("postgres", monkeypatch)
        unit.read_tasks_ahead([], ["t0", "t1"], LEASE)
        monkeypatch.undo()
        two = _texts(trips)
    with store.transaction() as unit:
        trips = round_trips("postgres", monkeypatch)
        unit.read_tasks_ahead([], ["t2", "t3", "t4"], LEASE)
        monkeypatch.undo()
        assert _texts(trips) == two and len(two) == 1, (two, trips)
        assert {t.id for t, _ in unit.tasks_read_ahead()} == {"t2", "t3", "t4"}


def _analysed(url: str) -> dict[str, int]:
    """How often each of culm's tables with rows was analysed (culm_root_count has its rows from
    the migration: it is analysed at the first look)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT relname, analyze_count FROM pg_stat_user_tables")).all()
    finally:
        engine.dispose()
    return {r[0]: int(r[1]) for r in rows if r[1] and r[0] != "culm_root_count"}


def _live_rows(url: str, table: str) -> int:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = :t"),
                                    {"t": table}).scalar_one())
    finally:
        engine.dispose()


def _add_states(store: SqlStore, first: int, n: int) -> None:
    with store.transaction() as unit:
        for i in range(first, first + n):
            unit.insert_state(_state(f"n{i}"))


def test_a_table_is_analysed_when_it_has_doubled_since_its_last_analysis(url, store):
    _add_states(store, 0, ANALYZE_FROM - 1)
    wait_until(lambda: _live_rows(url, "culm_state") == ANALYZE_FROM - 1, 15, 0.1, "the server counting the rows")
    store.keep_statistics()
    assert _analysed(url) == {}  # below ANALYZE_FROM: nothing
    _add_states(store, ANALYZE_FROM, 1)
    wait_until(lambda: _live_rows(url, "culm_state") == ANALYZE_FROM, 15, 0.1, "the server counting the rows")
    store.keep_statistics()
    assert _analysed(url) == {"culm_state": 1}  # never analysed, now big enough; the small tables not
    store.keep_statistics()
    _add_states(store, 2 * ANALYZE_FROM, ANALYZE_FROM)  # twice the rows analysed: not more than twice
    wait_until(lambda: _live_rows(url, "culm_state") == 2 * ANALYZE_FROM, 15, 0.1, "the server counting the rows")
    store.keep_statistics()
    assert _analysed(url) == {"culm_state": 1}
    _add_states(store, 4 * ANALYZE_FROM, 1)
    wait_until(lambda: _live_rows(url, "culm_state") == 2 * ANALYZE_FROM + 1, 15, 0.1, "the server counting the rows")
    store.keep_statistics()
    assert _analysed(url) == {"culm_state": 2}


def test_a_process_analysing_makes_the_others_skip_without_waiting(url, store):
    _add_states(store, 0, ANALYZE_FROM)
    wait_until(lambda: _live_rows(url, "culm_state") == ANALYZE_FROM, 15, 0.1, "the server counting the rows")
    other = create_engine(url)
    try:
        with other.connect() as conn:  # another process holds the lock, as while it analyses
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ANALYZE_LOCK})
            store.keep_statistics()  # returns at once: the lock is tried, never waited for
            assert _analysed(url) == {}
            conn.rollback()
    finally:
        other.dispose()
    store.keep_statistics()
    assert _analysed(url) == {"culm_state": 1}


def test_a_runtime_on_postgresql_analyses_its_grown_tables_by_itself(url):
    rt = culm.Runtime(url)
    try:
        for _ in range(ANALYZE_FROM // 2):  # four state rows each
            start = EmptyStartEvent()
            start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
            assert api.run_pipeline(rt, build_tree(start)).result
        wait_until(lambda: "culm_state" in _analysed(url), 30, 0.2, "culm_state analysed by the runtime's timer")
    finally:
        rt.close()
