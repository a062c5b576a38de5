"""A worker whose engine thread is stuck in a database call does not keep its work for ever.

The heartbeat beats on connections of its own, so a worker whose engine thread waits for ever on
a statement (here: a trigger that sleeps in the first write of one node's execution data; on CI,
session 17, psycopg's pipelined commit left half sent) kept beating and kept its tasks' leases: the
pipeline stayed RUNNING with no reason shown. Its EngineWatchdog now logs why and ends the process
after CULM_ENGINE_STUCK_AFTER, the statement of the vanished client ends (PostgreSQL:
client_connection_check_interval; MariaDB: the watchdog KILLs its process's sessions before it
exits), and another worker takes the task over, freed by the relays once the statement's row locks
are gone rather than when its lease runs out.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from backends import own_backend
from engine_fixtures import chain, wait_state
from sqlalchemy import create_engine, text
from support import wait_until

from culm import Runtime, api
from culm.builder import ServiceActivity, Var, build_tree
from culm.dispatch.liveness import ENGINE_STUCK_EXIT

pytestmark = pytest.mark.timeout(180)

WEDGE = """
CREATE SEQUENCE culm_test_wedge;
CREATE FUNCTION culm_test_wedge() RETURNS trigger AS $$
BEGIN
    IF NEW.node_id = '{node}' AND nextval('culm_test_wedge') = 1 THEN
        PERFORM pg_sleep(3600);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER culm_test_wedge BEFORE INSERT OR UPDATE ON culm_execution_data
    FOR EACH ROW EXECUTE FUNCTION culm_test_wedge();
"""
SLEEPING = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()")

# MariaDB: a trigger per event, the sequence shared, sleeping. A lock wait is not a wedge any more:
# the watchdog asks the server and lets a batch waiting for another session's row lock wait
# (session 19; it was the wedge here before). MariaDB looks every 5 s whether a sleeping
# statement's client is still there; the watchdog's KILL ends it first, rolling its transaction back.
WEDGE_MARIADB = ["CREATE SEQUENCE culm_test_wedge"] + [f"""
CREATE TRIGGER culm_test_wedge_{event} BEFORE {event} ON culm_execution_data FOR EACH ROW
BEGIN
    IF NEW.node_id = '{{node}}' AND NEXTVAL(culm_test_wedge) = 1 THEN
        DO SLEEP(3600);
    END IF;
END""" for event in ("INSERT", "UPDATE")]
SLEEPING_MARIADB = ("SELECT count(*) FROM information_schema.PROCESSLIST WHERE STATE = 'User sleep' "
                    "AND DB = DATABASE()")
# Where the engine thread is waiting, as its stack in the watchdog's line names it.
DRIVERS = {"postgres-redis": ("psycopg",), "mariadb-rabbitmq": ("pymysql", "MySQLdb")}
# Leases as long as the default's share of the test's clock: the takeover must not wait for them.
LEASE_SECONDS = "30"


@pytest.mark.parametrize("name", ["postgres-redis", "mariadb-rabbitmq"])
def test_a_worker_whose_engine_is_stuck_in_the_database_hands_its_work_over(name: str, tmp_path: Path) -> None:
    backend = own_backend(name, tmp_path, env={"CULM_ENGINE_STUCK_AFTER": "3", "CULM_LEASE_SECONDS": LEASE_SECONDS})
    admin = create_engine(backend.db_url, isolation_level="AUTOCOMMIT")
    mariadb = name.startswith("mariadb")
    try:
        act = ServiceActivity(component_code="dist_sleep")
        tree = build_tree(chain(act))
        with admin.connect() as conn:
            for statement in WEDGE_MARIADB if mariadb else [WEDGE]:
                conn.exec_driver_sql(statement.format(node=act.id))
        backend.concurrency = 1
        backend.start_workers(2)
        runtime = backend.runtime()
        began = time.monotonic()
        assert api.run_pipeline(runtime, tree).result

        def finished() -> bool:
            return api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["state"] == "FINISHED"

        # Stuck after 3 s, the process gone, buried within a look or two, the task freed as soon
        # as the wedged statement's locks are gone: well before the 30 s lease runs out.
        wait_until(finished, 25, 0.2, what="the pipeline to finish on the other worker")
        took = time.monotonic() - began

        logs = [backend.worker_log(i) for i in range(2)]
        said = [line for log in logs for line in log.splitlines() if "has been in one batch" in line]
        assert len(said) == 1, said  # one process was stuck, and said so once
        assert re.search(r"for \d+ s, over CULM_ENGINE_STUCK_AFTER \(3 s\): this worker process \(.+, pid \d+\) "
                         rf"stops beating and exits with status {ENGINE_STUCK_EXIT}", said[0]), said[0]
        assert any(driver in "".join(logs) for driver in DRIVERS[name])  # the engine thread: in the driver's wait
        # The wedged statement ended with its client: no session sleeps in the trigger any more.
        with admin.connect() as conn:
            sleeping = conn.execute(text(SLEEPING_MARIADB if mariadb else SLEEPING)).scalar()
        assert sleeping == 0
        # The wedged write is that of the call's outputs: its result was never committed, so the
        # call ran again on the other worker, once, as after a kill -9 of a worker in the middle of a
        # batch (docs/distributed.md, "A stuck engine").
        assert backend.executions()[act.id] == 2, backend.executions()
        print(f"finished {took:.1f} s after the run (engine stuck after 3 s)\n" + said[0])
    finally:
        admin.dispose()
        backend.teardown()


def test_an_engine_waiting_for_a_lock_another_session_holds_is_not_stuck(caplog) -> None:
    """A migration's lock (CREATE INDEX takes SHARE on its table) held past CULM_ENGINE_STUCK_AFTER:
    the watchdog asks PostgreSQL, on a connection of its own, finds the engine's connection waiting
    for a lock and lets the process wait; the pipeline finishes once the lock is released."""
    import logging
    import threading
    from types import SimpleNamespace

    import psycopg
    from backends import create_database, drop_database

    from culm.dispatch.liveness import EngineWatchdog
    from culm.storage.migrate import upgrade_database

    url = create_database("postgres")
    upgrade_database(url)
    runtime = Runtime(url)
    exits: list[int] = []
    state = SimpleNamespace(runner=SimpleNamespace(loop=runtime.dispatcher, task_ids=lambda: []),
                            engine=SimpleNamespace(owner="host:1:abc"), heartbeat=None)
    watchdog = EngineWatchdog(state, stuck_after=1.0, check=0.1, exit=exits.append)
    watchdog.start()
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute("LOCK TABLE culm_execution_data IN SHARE MODE")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert locked.wait(10)
        tree = build_tree(chain(ServiceActivity(component_code="example_component")))
        with caplog.at_level(logging.WARNING, logger="culm.dispatch.liveness"):
            api.run_pipeline(runtime=runtime, pipeline=tree)
            wait_until(lambda: exits or "waiting for a lock another database session holds" in caplog.text, 30, 0.1,
                       what="the watchdog to find the engine waiting for the lock")
            assert not exits  # past stuck_after (1 s) and waiting: the process stays
            release.set()

            def finished() -> bool:
                return api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["state"] == "FINISHED"

            wait_until(finished, 30, 0.1, what="the pipeline to finish once the lock is released")
        assert exits == []
    finally:
        release.set()
        watchdog.stop()
        holder.join(10)
        runtime.close()
        drop_database(url)


def test_a_server_refusing_the_client_check_leaves_the_store_usable(monkeypatch, caplog) -> None:
    """Windows servers and PostgreSQL 14 on macOS/BSD refuse a non-zero client_connection_check_interval
    ("must be set to 0 on this platform"); an out-of-range value is refused the same way. The store
    says so once and works; CULM_PG_CLIENT_CHECK_MS=0 does not ask at all."""
    import logging

    from backends import create_database, drop_database

    import culm.storage.sql.postgres as pg
    from culm.storage.migrate import upgrade_database

    url = create_database("postgres")
    try:
        upgrade_database(url)
        for setting in ("-1", "0"):
            monkeypatch.setenv("CULM_PG_CLIENT_CHECK_MS", setting)
            monkeypatch.setattr(pg, "_check_refused", [], raising=False)  # said once per process: each setting afresh
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="culm.storage.postgres"):
                runtime = Runtime(url)
                try:
                    tree = build_tree(chain(ServiceActivity(component_code="example_component")))
                    assert api.run_pipeline(runtime=runtime, pipeline=tree).result

                    wait_until(lambda rt=runtime, root=tree["id"]: _finished(rt, root), 30, 0.1,
                               what="the pipeline to finish")
                    with runtime.store.transaction() as unit:  # a write transaction after the refusal
                        assert unit is not None
                finally:
                    runtime.close()
            refused = [r for r in caplog.records if "refused client_connection_check_interval" in r.getMessage()]
            assert len(refused) == (1 if setting == "-1" else 0), [r.getMessage() for r in refused]
    finally:
        drop_database(url)


def _finished(runtime: Runtime, root_id: str) -> bool:
    return api.get_pipeline_states(runtime, root_id).data[root_id]["state"] == "FINISHED"


def test_another_thread_waiting_for_the_wedged_engine_does_not_hide_it() -> None:
    """The engine wedged in a statement (not a lock wait) while an operator command of the same
    process (culm.api, another thread, another pooled connection) waits for a row the engine's
    transaction holds: the lock probe asks about the engine thread's own connection only, so the
    watchdog ends the process (it counted any of the process's connections' waits and waited for ever)."""
    import threading
    from types import SimpleNamespace

    from backends import create_database, drop_database

    from culm.dispatch.liveness import EngineWatchdog
    from culm.storage.migrate import upgrade_database

    url = create_database("postgres")
    upgrade_database(url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    runtime = Runtime(url)
    exits: list[int] = []
    state = SimpleNamespace(runner=SimpleNamespace(loop=runtime.dispatcher, task_ids=lambda: []),
                            engine=SimpleNamespace(owner="host:1:abc"), heartbeat=None, store=None)
    act = ServiceActivity(component_code="example_component")
    tree = build_tree(chain(act))
    with admin.connect() as conn:
        conn.exec_driver_sql(WEDGE.format(node=act.id))
    watchdog = EngineWatchdog(state, stuck_after=2.0, check=0.2, exit=exits.append)
    try:
        assert api.run_pipeline(runtime=runtime, pipeline=tree).result

        def count(sql: str) -> int:
            with admin.connect() as c:
                return int(c.execute(text(sql)).scalar() or 0)

        wait_until(lambda: count(SLEEPING) > 0, 20, 0.1, what="the engine to wedge in the trigger")
        threading.Thread(target=lambda: api.forced_fail_activity(runtime, act.id), daemon=True).start()
        wait_until(lambda: count("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                 " AND datname = current_database()") > 0,
                   20, 0.1, what="the operator command to wait for the engine's row")
        watchdog.start()
        wait_until(lambda: exits, 30, 0.1, what="the watchdog to end the process of the wedged engine")
        assert exits == [ENGINE_STUCK_EXIT]
    finally:
        watchdog.stop()
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                           " AND datname = current_database()"))
        runtime.close()
        admin.dispose()
        drop_database(url)


def test_an_engine_waiting_for_a_row_lock_on_mariadb_is_not_stuck(caplog) -> None:
    """MariaDB: the engine's batch waits for a row lock another session holds (the node's state row,
    locked while its call runs) past CULM_ENGINE_STUCK_AFTER. The watchdog asks the server
    (information_schema's InnoDB lock waits, of the engine thread's own session) and lets the
    process wait, as on PostgreSQL; it counted the wait as stuck and ended the process until
    session 19 (innodb_lock_wait_timeout, 50 s, does not make it moot: each statement of a batch
    may wait that long, a server may set it higher, and a table's lock, a migration's, waits up to
    lock_wait_timeout, a year)."""
    import logging
    from types import SimpleNamespace

    import components
    import pymysql
    from backends import create_database, drop_database

    from culm.dispatch.liveness import EngineWatchdog
    from culm.storage.migrate import upgrade_database

    url = create_database("mariadb")
    upgrade_database(url)
    runtime = Runtime(url)
    exits: list[int] = []
    state = SimpleNamespace(runner=SimpleNamespace(loop=runtime.dispatcher, task_ids=lambda: []),
                            engine=SimpleNamespace(owner="host:1:abc"), heartbeat=None, store=None)
    watchdog = EngineWatchdog(state, stuck_after=1.0, check=0.1, exit=exits.append)
    act = ServiceActivity(component_code="t_gate")
    act.component.inputs.gate = Var(type=Var.PLAIN, value="mariadb-row-lock")
    tree = build_tree(chain(act))
    database = url.rsplit("/", 1)[1].split("?")[0]
    holder = pymysql.connect(host="127.0.0.1", port=3306, user="root", database=database)
    try:
        assert api.run_pipeline(runtime=runtime, pipeline=tree).result
        wait_state(runtime, act.id, "RUNNING", timeout=30)
        holder.begin()  # another process's session: holds the state row the call's result writes
        holder.cursor().execute("SELECT * FROM culm_state WHERE node_id = %s FOR UPDATE", [act.id])
        watchdog.start()
        components.gate("mariadb-row-lock").set()
        with caplog.at_level(logging.WARNING, logger="culm.dispatch.liveness"):
            _waits_then_finishes(runtime, tree["id"], exits, caplog, holder.rollback)
    finally:
        holder.close()
        watchdog.stop()
        runtime.close()
        drop_database(url)


def _waits_then_finishes(runtime, root_id: str, exits: list[int], caplog, release) -> None:
    """The watchdog finds the engine waiting for a lock and keeps the process; once ``release()``
    lets the lock go, the pipeline finishes."""
    wait_until(lambda: exits or "waiting for a lock another database session holds" in caplog.text, 30, 0.1,
               what="the watchdog to find the engine waiting for the lock")
    assert not exits  # past stuck_after (1 s) and waiting: the process stays
    release()
    wait_until(lambda: api.get_pipeline_states(runtime, root_id).data[root_id]["state"] == "FINISHED", 30, 0.1,
               what="the pipeline to finish once the lock is released")
    assert exits == []
