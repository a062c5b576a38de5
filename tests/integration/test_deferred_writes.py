"""Deferred writes on the server databases (PostgreSQL: pipelined; MySQL/MariaDB: one
multi-statement query): what a transaction wrote is what its own reads see and what its commit
stores, a write that fails takes its transaction (or savepoint) with it, and text that looks like
SQL is stored as it was given."""

from __future__ import annotations

import pytest
from backends import create_database, drop_database, fresh_store
from driver_log import rollbacks, round_trips

from culm.core.records import StateRecord
from culm.storage.migrate import upgrade_database
from culm.storage.sql import SqlStore
from culm.storage.sql import mysql as mysql_dialect

pytestmark = pytest.mark.timeout(60)


# "mysqlclient": MariaDB through the C driver (culm[mysqlclient]) instead of PyMySQL.
@pytest.fixture(params=["postgres", "mariadb", "mysqlclient"])
def store(request):
    yield from fresh_store(request.param)


@pytest.fixture(params=["mariadb", "mysqlclient"])
def mysql_store(request):
    """MariaDB only (through either driver): what its multi-statement queries do."""
    yield from fresh_store(request.param)


def _state(node_id: str, name: str = "RUNNING") -> StateRecord:
    return StateRecord(node_id, "root", "root", name, "v1", created_time=1.0)


def test_a_transactions_reads_see_its_deferred_writes_and_the_commit_stores_them(store):
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
        unit.set_execution_outputs("a", {"x": 1})
        assert unit.get_state("a").name == "RUNNING"  # the writes go with this read
        assert unit.update_state("a", expect_version="v1", name="FINISHED")  # locked here: deferred
        assert not unit.update_state("a", expect_version="v1", expect_names=["RUNNING"], name="FAILED")
    with store.reading() as unit:
        assert unit.get_state("a").name == "FINISHED"
        assert unit.get_execution_data("a") == ({}, {"x": 1})


def test_a_failing_deferred_write_rolls_back_the_whole_transaction(store):
    with store.transaction() as unit:
        unit.insert_state(_state("taken"))
    with pytest.raises(Exception, match="(?i)duplicate|unique"), store.transaction() as unit:
        unit.insert_state(_state("b"))
        unit.insert_state(_state("taken"))  # the primary key clash surfaces when the writes are sent
        unit.insert_state(_state("c"))
    with store.reading() as unit:
        assert set(unit.get_states(["b", "c", "taken"])) == {"taken"}


def test_a_failing_deferred_write_in_a_savepoint_undoes_only_the_savepoint(store):
    with store.transaction() as unit:
        unit.insert_state(_state("taken"))
    with store.transaction() as unit:
        unit.insert_state(_state("before"))
        with pytest.raises(Exception, match="(?i)duplicate|unique"), unit.savepoint():
            unit.insert_state(_state("inside"))
            unit.insert_state(_state("taken"))
        unit.insert_state(_state("after"))
    with store.reading() as unit:
        assert set(unit.get_states(["before", "inside", "after", "taken"])) == {"before", "after", "taken"}


def test_text_that_looks_like_sql_is_stored_as_given(store):
    tricky = {"s": "a'; DROP TABLE culm_state; -- %s %(x)s ? \\ \" `x`", "n": "line\nbreak;"}
    with store.transaction() as unit:
        unit.insert_state(_state("q"))
        unit.set_execution_outputs("q", tricky)
        unit.set_execution_outputs("r", {"after": True})
    with store.reading() as unit:
        assert unit.get_execution_data("q") == ({}, tricky)
        assert unit.get_execution_data("r") == ({}, {"after": True})
        assert unit.get_state("q") is not None


def test_mysql_sends_deferred_writes_in_queries_of_bounded_size(mysql_store, monkeypatch):
    store = mysql_store
    monkeypatch.setattr(mysql_dialect, "MAX_QUERY_CHARS", 600)  # a few writes per query
    with store.transaction() as unit:
        for i in range(40):
            unit.insert_state(_state(f"n{i}"))
            unit.set_execution_outputs(f"n{i}", {"i": i})
    with store.reading() as unit:
        assert len(unit.get_states([f"n{i}" for i in range(40)])) == 40
        assert unit.get_execution_data("n39") == ({}, {"i": 39})


def test_mysql_writes_travel_with_the_next_read_in_one_query(mysql_store, monkeypatch):
    store = mysql_store
    with store.transaction() as unit:
        unit.insert_state(_state("w"))
        sent = round_trips("mariadb", monkeypatch)
        unit.set_execution_outputs("w", {"x": 1})
        unit.update_process("p-none", current_node_id="w")  # no such row: a write all the same
        assert unit.get_execution_data("w") == ({}, {"x": 1})
        monkeypatch.undo()
    assert len(sent) == 1 and sent[0].count(";\n") == 3  # state, outputs, process, then the read


def test_a_unit_that_only_took_row_locks_ends_its_transaction(store):
    """MySQL: the store's commit is skipped after a query that ended with COMMIT; a later unit on
    the same pooled connection that only reads (here: locks a row) must still be ended, or its
    locks would outlive it."""
    with store.transaction() as unit:
        unit.insert_state(_state("x"))  # its last query commits
    with store.transaction() as unit:
        assert unit.get_state("x", for_update=True) is not None  # a locking read, nothing else
    other = SqlStore(store.url, create=False)
    try:
        with other.transaction() as unit:  # another connection takes the lock at once
            assert (
                unit._one(
                    unit.adapt("SELECT name FROM culm_state WHERE node_id = ? FOR UPDATE NOWAIT"), ["x"]
                )[0]
                == "RUNNING"
            )
    finally:
        other.dispose()


def _lock_at_once(store, node_id):
    """Lock ``node_id``'s state from another store (another connection) without waiting: raises
    if any connection still holds the row."""
    other = SqlStore(store.url, create=False)
    try:
        with other.transaction() as unit:
            sql = unit.adapt("SELECT name FROM culm_state WHERE node_id = ? FOR UPDATE NOWAIT")
            return unit._one(sql, [node_id])[0]
    finally:
        other.dispose()


def test_a_connection_handed_back_mid_transaction_is_still_rolled_back(store):
    """The pool skips its own rollback only where the store ended the transaction (MySQL: one round
    trip fewer per unit); a connection handed back with a transaction open, here holding a row
    lock, is still rolled back before anyone else gets it."""
    with store.transaction() as unit:
        unit.insert_state(_state("x"))
    raw = store.engine.raw_connection()
    cur = store._unit.new_cursor(raw)  # as a unit sends its statements
    cur.execute(store._unit.adapt("SELECT name FROM culm_state WHERE node_id = ? FOR UPDATE"), ["x"])
    assert cur.fetchall()[0][0] == "RUNNING"
    raw.close()  # the lock taken above goes with the pool's rollback
    assert _lock_at_once(store, "x") == "RUNNING"
    with store.reading() as unit:  # the same pooled connection again: nothing left over
        assert unit.get_state("x").name == "RUNNING"
    assert _lock_at_once(store, "x") == "RUNNING"


def _set_state(store, node_id, name):
    other = SqlStore(store.url, create=False)
    try:
        with other.transaction() as unit:
            unit._x(unit.adapt("UPDATE culm_state SET name = ? WHERE node_id = ?"), [name, node_id])
    finally:
        other.dispose()


def test_a_snapshot_read_sees_one_moment_and_a_plain_read_sees_each_commit(store):
    """A plain read-only unit (PostgreSQL: in autocommit, no BEGIN/ROLLBACK) sees what others
    committed between its reads; a snapshot unit stays one transaction that sees neither."""
    with store.transaction() as unit:
        unit.insert_state(_state("x"))
    with store.reading(snapshot=True) as unit:
        assert unit.get_state("x").name == "RUNNING"
        _set_state(store, "x", "FAILED")
        assert unit.get_state("x").name == "RUNNING"
    with store.reading() as unit:
        assert unit.get_state("x").name == "FAILED"
        _set_state(store, "x", "FINISHED")
        assert unit.get_state("x").name == "FINISHED"


def test_a_write_unit_after_read_units_is_still_one_transaction(store):
    """Read units leave their pooled connection as they found it: a write unit that fails after
    them on the same connections keeps none of its writes, and SQLAlchemy's own connections are
    not left in autocommit."""
    for _ in range(3):
        with store.reading() as unit:
            assert unit.get_state("x") is None
    with pytest.raises(RuntimeError), store.transaction() as unit:
        unit.insert_state(_state("x"))
        assert unit.get_state("x") is not None  # sent (PostgreSQL: pipelined; MariaDB: with the read)
        raise RuntimeError("undo")
    with store.reading() as unit:
        assert unit.get_state("x") is None
    with store.engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert not (driver.get_autocommit() if store.dialect == "mysql" else driver.autocommit)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_new_run_is_stored_without_reading_its_ids_first_and_a_taken_id_is_still_refused(kind, monkeypatch):
    """The unique keys of a new run's inserts check its ids at the commit: no read goes before the
    writes (a round trip per run_pipeline), and a rerun or a reused node id is refused by name with
    nothing stored."""
    import copy

    import culm
    from culm import api
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    url = create_database(kind)
    upgrade_database(url)
    rt = culm.Runtime(url, workers=0)  # submits only: nothing runs the tasks
    try:
        start, act = EmptyStartEvent(), ServiceActivity(component_code="example_component")
        start.extend(act).extend(EmptyEndEvent())
        tree = build_tree(start)
        sent = round_trips(kind, monkeypatch)
        assert api.run_pipeline(rt, tree).result
        assert not [s for s in sent if "FROM culm_node" in s], sent
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "RUNNING"

        again = api.run_pipeline(rt, tree)
        assert not again.result and f"pipeline {tree['id']} already exists" in again.message
        other = copy.deepcopy(tree)
        other["id"] = "p" + "2" * 32
        reused = api.run_pipeline(rt, other)
        assert not reused.result and "reuses node ids" in reused.message and act.id in reused.message
        assert api.get_pipeline_states(rt, other["id"]).data == {}
        with rt.store.reading() as unit:
            assert unit.existing_node_ids([other["id"]]) == set()
            assert [t.root_id for t in unit.pending_tasks(10**10, 100)] == [tree["id"]]
    finally:
        monkeypatch.undo()
        rt.close()
        drop_database(url)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_the_last_branch_of_a_join_wakes_its_parent_with_the_commit(kind, monkeypatch):
    """A join is decided in the database with the commit: the acks, the last branch's wake of its
    parent (its task at the gateway) and the parents' read go after the batch's writes and before
    the COMMIT, in its round trip, so no transaction takes a round trip of its own for a join; and
    the pipeline still finishes with every branch run once and counted once."""
    import re

    from engine_fixtures import finish, node_state

    import culm
    from culm import builder
    from culm.storage.sql.statements import PROCESS_SELECT

    url = create_database(kind)
    upgrade_database(url)
    rt = culm.Runtime(url, workers=2)
    try:
        start, pg = builder.EmptyStartEvent(), builder.ParallelGateway()
        branches = [builder.ServiceActivity(component_code="example_component") for _ in range(3)]
        converge = builder.ConvergeGateway()
        start.extend(pg).connect(*branches).to(pg).converge(converge).extend(builder.EmptyEndEvent())
        tree = builder.build_tree(start)
        sent = round_trips(kind, monkeypatch)
        finish(rt, tree, timeout=30)
        monkeypatch.undo()
        ack = "UPDATE culm_process SET ack_num = "
        acks = [s for s in sent if ack in s]
        assert acks, sent
        for trip in acks:  # the count, the wake and the read travel with the commit
            assert trip.rstrip().endswith(("COMMIT", "COMMIT None", "COMMIT ()")), trip
            assert trip.index(ack) < trip.index("INSERT INTO culm_task (id, kind, process_id") < trip.index(
                PROCESS_SELECT) < trip.rindex("COMMIT"), trip
        assert [s for s in sent if PROCESS_SELECT in s] == acks  # the parents are read nowhere else
        # the children counted (the acks of branches that join in one batch go together)
        counted = re.compile(r"WITH acked AS .*? FALSE FROM acked WHERE .*? [\[(](\d+), |ack_num = ack_num \+ (\d+) WHERE")
        assert sum(int(a or b) for s in sent for a, b in counted.findall(s)) == 3, sent
        for b in branches:
            assert node_state(rt, b.id)["state"] == "FINISHED"
            assert node_state(rt, b.id)["loop"] == 1 and node_state(rt, b.id)["retry"] == 0
        assert node_state(rt, converge.id)["state"] == "FINISHED"
        assert node_state(rt, tree["id"])["state"] == "FINISHED"
    finally:
        monkeypatch.undo()
        rt.close()
        drop_database(url)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_pipeline_and_its_subprocess_end_without_reading_their_states_again(kind, monkeypatch):
    """An end event finishes its pipeline from the state its walk holds (a shared row lock since
    the walk read its stack): no locking read of it, one round trip fewer per pipeline and
    subprocess, and the run ends as before."""
    import re

    from engine_fixtures import finish, node_state

    import culm
    from culm import builder

    url = create_database(kind)
    upgrade_database(url)
    rt = culm.Runtime(url, workers=2)
    try:
        sub_start, sub_act = builder.EmptyStartEvent(), builder.ServiceActivity(component_code="example_component")
        sub_start.extend(sub_act).extend(builder.EmptyEndEvent())
        sub = builder.SubProcess(start=sub_start)
        start, act = builder.EmptyStartEvent(), builder.ServiceActivity(component_code="example_component")
        start.extend(act).extend(sub).extend(builder.EmptyEndEvent())
        tree = builder.build_tree(start)
        trips = round_trips(kind, monkeypatch)
        finish(rt, tree, timeout=30)
        monkeypatch.undo()
        # (an activity's own state is still locked when its result is applied: MariaDB, one task)
        one_state_locked = re.compile(r"FROM culm_state WHERE node_id = (\$1|'[^']*') FOR UPDATE")
        pipelines_locked = [t for t in trips if one_state_locked.search(t) and (sub.id in t or tree["id"] in t)]
        assert pipelines_locked == [], pipelines_locked
        for node_id in (act.id, sub.id, sub_act.id, tree["id"]):
            assert node_state(rt, node_id)["state"] == "FINISHED"
    finally:
        monkeypatch.undo()
        rt.close()
        drop_database(url)


def test_a_node_whose_state_row_is_new_has_no_inner_loops_to_reset(store, monkeypatch):
    """reset_inner_loops (a subprocess entered) sends nothing for a node whose state row this very
    transaction inserted (rows are never deleted: no child row can be stored), as long as no child
    row was written here since; otherwise it resets as before."""
    kind = "postgres" if store.engine.dialect.name.startswith("postgres") else "mariadb"
    trips = round_trips(kind, monkeypatch)
    with store.transaction() as unit:
        unit.insert_state(StateRecord("sub", "root", "root", "RUNNING", "v1", created_time=1.0))
        unit.reset_inner_loops("sub")  # first entry: nothing to reset
        unit.insert_state(StateRecord("c1", "root", "sub", "FINISHED", "v1", inner_loop=2, created_time=1.0))
        unit.insert_state(StateRecord("other", "root", "", "FINISHED", "v1", inner_loop=3, created_time=1.0))
    sent_first = "\n".join(trips)
    assert "inner_loop <> 0" not in sent_first, sent_first
    with store.transaction() as unit:
        unit.insert_state(StateRecord("sub2", "root", "root", "RUNNING", "v1", created_time=1.0))
        unit.reset_inner_loops("sub2")
        # an appointed row (no parent yet) becomes a child of the new row: the next reset is sent
        assert unit.update_state("other", expect_version="v1", parent_id="sub2")
        unit.reset_inner_loops("sub2")  # entered again in the same transaction (a loop)
        unit.insert_state(StateRecord("sub3", "root", "root", "RUNNING", "v1", created_time=1.0))
        unit.insert_state(StateRecord("c3", "root", "sub3", "FINISHED", "v1", inner_loop=2, created_time=1.0))
        unit.reset_inner_loops("sub3")  # a child row written since: reset
        unit.reset_inner_loops("sub")  # a row of an earlier transaction: reset
    monkeypatch.undo()
    with store.reading() as unit:
        got = {n: st.inner_loop for n, st in unit.get_states(["c1", "other", "c3"]).items()}
    assert got == {"c1": 0, "other": 0, "c3": 0}


def test_a_rows_second_update_waiting_with_the_first_is_merged_into_it(store, monkeypatch):
    """Two deferred UPDATEs of a row by its id (a process saved by a handler, then by its walk)
    go as one UPDATE in the first one's place, with the later values; not when a write queued
    between them may touch the row (then both go, in order)."""
    from culm.core.records import ProcessRecord

    kind = "postgres" if store.engine.dialect.name.startswith("postgres") else "mariadb"
    with store.transaction() as unit:
        unit.insert_processes([ProcessRecord(p, "root", None, "start", None, ["root"]) for p in ("p1", "p2")])
    trips = round_trips(kind, monkeypatch)
    with store.transaction() as unit:
        unit.update_process("p1", asleep=True, current_node_id="a")
        unit.update_process("p2", current_node_id="x")  # another row: no matter
        unit.update_process("p1", current_node_id="b", stack=["root", "sub"])
        unit.update_process("p2", dead=True)
        unit.kill_processes_of_root("elsewhere")  # rows unknown: sent at once, p1 and p2 with it
        unit.update_process("p1", need_ack=2)
        unit.reset_inner_loops("no-such-parent")  # a write on rows not known here
        unit.update_process("p1", ack_num=1)
    monkeypatch.undo()
    sent = "\n".join(trips)
    assert sent.count("UPDATE culm_process SET") == 5, sent  # p1, p2, kill, then p1 twice
    with store.reading() as unit:
        p1, p2 = unit.get_process("p1"), unit.get_process("p2")
    assert (p1.asleep, p1.current_node_id, p1.stack, p1.need_ack, p1.ack_num) == (True, "b", ["root", "sub"], 2, 1)
    assert (p2.current_node_id, p2.dead) == ("x", True)


def test_mysql_merges_inserts_and_deletes_of_one_shape_within_a_run_of_distinct_rows(mysql_store, monkeypatch):
    """MariaDB: INSERTs of one table and columns (upserts too) waiting in one query go as one
    multi-row INSERT, DELETEs of task rows by id as one DELETE, in the first one's place; not
    past a write on rows not known (a new run starts), nor past a write to one of their rows.
    The rows stored are what the writes one by one would have left."""
    from culm.core.records import ProcessRecord, TaskRecord

    store = mysql_store
    with store.transaction() as unit:
        unit.insert_processes([ProcessRecord("p1", "root", None, "start", None, ["root"])])
        unit.insert_tasks([TaskRecord(t, "execute", "p1", "a", "root") for t in ("t1", "t2", "t3")])
        unit.set_execution_outputs("a", {"old": True})
    trips = round_trips("mariadb", monkeypatch)
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
        unit.set_execution_outputs("a", {"x": 1})  # an upsert of an existing row
        unit.update_process("p1", current_node_id="a")
        unit.delete_task("t1")
        unit.insert_state(_state("b"))  # joins a's INSERT
        unit.set_execution_outputs("b", {"x": 2})  # joins a's upsert
        unit.delete_task("t2")  # joins t1's DELETE
        assert unit.update_state("a", expect_version="v1", name="FINISHED")  # folded into its INSERT
        unit.update_task("t3", node_id="b")
        unit.delete_task("t3")  # a row the run touched: a new run
        unit.insert_state(_state("c"))  # may not move ahead of t3's UPDATE: a new INSERT
        unit.reset_inner_loops("a-parent-of-nothing")  # rows not known: a new run
        unit.insert_state(_state("d"))
    monkeypatch.undo()
    sent = ";\n".join(trips).split(";\n")
    inserts = [s for s in sent if s.startswith("INSERT INTO culm_state")]
    assert len(inserts) == 3, sent  # a+b, c, d
    assert inserts[0].count("'a'") == 1 and inserts[0].count("'b'") == 1, inserts[0]
    assert len([s for s in sent if s.startswith("INSERT INTO culm_execution_data")]) == 1, sent
    deletes = [s for s in sent if s.startswith("DELETE FROM culm_task")]
    assert len(deletes) == 2 and "IN (" in deletes[0], deletes
    assert sent.index(deletes[0]) < sent.index(next(s for s in sent if s.startswith("UPDATE culm_task"))) < sent.index(
        deletes[1]) < sent.index(inserts[1])
    with store.reading() as unit:
        states = unit.get_states(["a", "b", "c", "d"])
        assert {n: st.name for n, st in states.items()} == {"a": "FINISHED", "b": "RUNNING", "c": "RUNNING",
                                                            "d": "RUNNING"}
        assert unit.get_execution_data("a") == ({}, {"x": 1})
        assert unit.get_execution_data("b") == ({}, {"x": 2})
        assert unit.get_process("p1").current_node_id == "a"
        assert [unit.get_task(t) for t in ("t1", "t2", "t3")] == [None, None, None]


def test_mysql_plain_reads_cost_their_reads_alone_and_hold_no_table_after(mysql_store, monkeypatch):
    """MariaDB: a read-only unit that needs no snapshot (a poll) sends its SELECTs and nothing
    else (its connection is in autocommit: no ROLLBACK to end it), sees each commit, and leaves
    its pooled connection holding no metadata lock (an ALTER TABLE goes through at once)."""
    from sqlalchemy import text

    store = mysql_store
    with store.transaction() as unit:
        unit.insert_state(_state("r"))
    with store.reading() as unit:  # the plain reads' pool connects (and its dialect starts) here
        unit.get_state("r")
    trips = round_trips("mariadb", monkeypatch)
    rollbacks(monkeypatch, trips)
    with store.reading() as unit:
        assert unit.get_state("r").name == "RUNNING"
        assert unit.get_state("none") is None
    with store.transaction() as unit:
        assert unit.update_state("r", expect_version="v1", name="FINISHED")
    with store.reading() as unit:
        assert unit.get_state("r").name == "FINISHED"
    monkeypatch.undo()
    reads = [t for t in trips if not t.startswith("UPDATE")]
    assert len(reads) == 3 and all(t.startswith("SELECT") for t in reads), trips
    with store.engine.connect() as conn:  # the read connections now idle in their pool
        conn.execute(text("SET SESSION lock_wait_timeout = 5"))
        conn.execute(text("ALTER TABLE culm_state COMMENT = 'read units hold no lock'"))


def test_mysql_merges_updates_of_single_rows_keeping_each_rows_conditions(mysql_store, monkeypatch):
    """MariaDB: UPDATEs of one row each by key, setting the same columns, go as one UPDATE (each
    column a CASE on the key); a compare-and-set keeps its own conditions, row by row. The rows
    stored are what the UPDATEs one by one would have left; an UPDATE of a row the run touched
    is not merged."""
    from culm.core.records import ProcessRecord

    store = mysql_store
    with store.transaction() as unit:
        unit.insert_processes([ProcessRecord(p, "root", None, "start", None, ["root"]) for p in ("p1", "p2", "p3")])
        for node_id in ("s1", "s2"):
            unit.insert_state(_state(node_id))
    trips = round_trips("mariadb", monkeypatch)
    with store.transaction() as unit:
        assert set(unit.hold_states(["s1", "s2"])) == {"s1", "s2"}  # locked here: their CAS are deferred
        unit.update_process("p1", current_node_id="a", asleep=True)
        assert unit.update_state("s1", expect_version="v1", expect_names=["RUNNING"], name="FINISHED")
        unit.update_process("p2", current_node_id="b", asleep=False)
        assert unit.update_state("s2", expect_version="v1", expect_names=["RUNNING"], name="FAILED")
        unit.update_process("p3", current_node_id="c", asleep=True)
        unit.update_task("p1", node_id="x")  # another table, a row that is no process: no matter
    monkeypatch.undo()
    sent = trips[-1].split(";\n")
    processes = [s for s in sent if s.startswith("UPDATE culm_process")]
    states = [s for s in sent if s.startswith("UPDATE culm_state")]
    assert len(processes) == 1 and "CASE id" in processes[0], sent
    assert len(states) == 1 and states[0].count("version = 'v1'") == 2, sent
    with store.reading() as unit:
        got = {p: (r.current_node_id, r.asleep) for p in ("p1", "p2", "p3") if (r := unit.get_process(p))}
        names = {n: st.name for n, st in unit.get_states(["s1", "s2"]).items()}
    assert got == {"p1": ("a", True), "p2": ("b", False), "p3": ("c", True)}
    assert names == {"s1": "FINISHED", "s2": "FAILED"}


@pytest.fixture
def pg_store():
    """PostgreSQL only: what its combined statements do."""
    yield from fresh_store("postgres")


def test_postgres_merges_the_writes_of_one_text_in_a_combined_statement(pg_store, monkeypatch):
    """PostgreSQL: writes of one text waiting in one run of a combined statement (distinct rows)
    go as one part: INSERTs (upserts too) as one multi-row INSERT, DELETEs by key as one, UPDATEs
    of single rows as one UPDATE joined to their values, each row keeping its own conditions, a
    column set to NULL in every row included. The rows stored are what the writes one by one
    would have left; a write to a row the run touched is not merged."""
    from culm.core.records import ProcessRecord, TaskRecord

    store = pg_store
    with store.transaction() as unit:
        unit.insert_processes([ProcessRecord(p, "root", None, "start", None, ["root"], suspended_by="op")
                               for p in ("p1", "p2", "p3")])
        unit.insert_tasks([TaskRecord(t, "execute", "p1", "a", "root") for t in ("t1", "t2", "t3")])
        for node_id in ("s1", "s2", "s3"):
            unit.insert_state(_state(node_id))
        unit.set_execution_outputs("a", {"old": True})
    trips = round_trips("postgres", monkeypatch)
    with store.transaction() as unit:
        assert set(unit.hold_states(["s1", "s2", "s3"])) == {"s1", "s2", "s3"}  # locked: their CAS are deferred
        unit.insert_state(_state("a"))
        unit.set_execution_outputs("a", {"x": 1})  # an upsert of an existing row
        unit.update_process("p1", current_node_id="a", asleep=True, suspended_by=None)
        assert unit.update_state("s1", expect_version="v1", expect_names=["RUNNING"], name="FINISHED")
        unit.delete_task("t1")
        unit.insert_state(_state("b"))
        unit.set_execution_outputs("b", {"x": 2})
        unit.update_process("p2", current_node_id="b", asleep=False, suspended_by=None)
        assert unit.update_state("s2", expect_version="v1", expect_names=["RUNNING"], name="FAILED")
        assert not unit.update_state("s3", expect_version="v2", name="FAILED")  # not its version: no write
        unit.delete_task("t2")
        unit.update_process("p3", current_node_id="c", asleep=True, suspended_by=None)
        unit.update_process("p3", priority=7)  # merged into p3's UPDATE (a row's second UPDATE)
        unit.update_task("t3", node_id="b")
        unit.delete_task("t3")  # a row the run touched: a new run
    monkeypatch.undo()
    combined = [s for s in trips[-1].split("\n") if s.startswith("WITH w0 AS")]
    assert len(combined) == 1, trips[-1]
    parts = combined[0].split(" SELECT 1 ")[0]
    assert parts.count("INSERT INTO culm_state") == 1 and parts.count("INSERT INTO culm_execution_data") == 1, parts
    assert parts.count("UPDATE culm_process AS t") == 1 and parts.count("UPDATE culm_state AS t") == 1, parts
    assert parts.count("DELETE FROM culm_task WHERE id IN (") == 1, parts
    assert "DELETE FROM culm_task WHERE id = ?" in trips[-1] or "DELETE FROM culm_task WHERE id = $" in trips[-1]
    with store.reading() as unit:
        procs = {p: unit.get_process(p) for p in ("p1", "p2", "p3")}
        names = {n: st.name for n, st in unit.get_states(["a", "b", "s1", "s2", "s3"]).items()}
        assert unit.get_execution_data("a") == ({}, {"x": 1})
        assert unit.get_execution_data("b") == ({}, {"x": 2})
        assert [unit.get_task(t) for t in ("t1", "t2", "t3")] == [None, None, None]
    assert {p: (r.current_node_id, r.asleep, r.suspended_by, r.priority) for p, r in procs.items() if r} == {
        "p1": ("a", True, None, 100), "p2": ("b", False, None, 100), "p3": ("c", True, None, 7)}
    assert names == {"a": "RUNNING", "b": "RUNNING", "s1": "FINISHED", "s2": "FAILED", "s3": "RUNNING"}
