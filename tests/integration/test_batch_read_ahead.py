"""A batch's reads up front (PostgreSQL, MySQL/MariaDB): tasks claimed and read with their
processes in one or two statements, the walks' held states, states and contexts in one round
trip, all kept true to the transaction's own writes; a state row the transaction holds is not
read again, and a compare-and-set on it waits for the commit like any other write."""

from __future__ import annotations

import contextlib

import pytest
from backends import create_database, drop_database
from driver_log import round_trips

from culm.core.records import EXECUTE, ContextValue, ProcessRecord, StateRecord, TaskRecord
from culm.storage.migrate import upgrade_database
from culm.storage.sql import SqlStore

pytestmark = pytest.mark.timeout(60)

LEASE = ("me", 2e9, 1e9)  # owner, until, now


@pytest.fixture(params=["postgres", "mariadb", "mysqlclient"])  # mysqlclient: MariaDB through the C driver
def store(request):
    url = create_database(request.param)
    upgrade_database(url)
    s = SqlStore(url)
    yield s
    s.dispose()
    drop_database(url)


def _process(pid: str) -> ProcessRecord:
    return ProcessRecord(pid, "root", None, "n-" + pid, None, ["root"])


def _task(tid: str, pid: str) -> TaskRecord:
    return TaskRecord(tid, EXECUTE, pid, "n-" + pid, "root", due=0.0, running_version="v1")


def _seed(store: SqlStore) -> None:
    with store.transaction() as unit:
        unit.insert_processes([_process("p1"), _process("p2"), _process("p3")])
        unit.insert_tasks([_task("t1", "p1"), _task("t2", "p2"), _task("t3", "p3")])
        unit.insert_state(StateRecord("n-p3", "root", "root", "RUNNING", "v1", created_time=1.0))
        unit.claim_task("t2", "someone-else", 2e9, 1e9)  # leased by a live worker


def test_fresh_tasks_are_claimed_at_once_and_a_leased_one_is_not(store):
    _seed(store)
    with store.transaction() as unit:
        unit.read_tasks_ahead(["t1", "t2"], [], LEASE)
        assert {t.id for t, _ in unit.tasks_read_ahead()} == {"t1"}
        task, proc = unit.task_with_process("t1", LEASE)
        assert (task.id, proc.id, proc.current_node_id) == ("t1", "p1", "n-p1")
        assert unit.task_with_process("t2", LEASE) == (None, None)
    with store.reading() as unit:
        owners = {t: unit._one("SELECT owner FROM culm_task WHERE id = ?", [t])[0] for t in ("t1", "t2")}
    assert owners == {"t1": "me", "t2": "someone-else"}


def test_a_process_written_before_its_tasks_turn_is_read_again(store):
    _seed(store)
    with store.transaction() as unit:
        unit.read_tasks_ahead(["t1", "t3"], [], LEASE)
        unit.update_process("p3", current_node_id="moved")  # an earlier task of the batch did this
        _, proc = unit.task_with_process("t3", LEASE)
        assert proc.current_node_id == "moved"


def test_resumed_tasks_come_with_their_nodes_state_locked(store):
    _seed(store)
    with store.transaction() as unit:
        unit.read_tasks_ahead([], ["t1", "t3"], LEASE)
        task, proc = unit.task_with_process("t3")
        assert (task.id, proc.id) == ("t3", "p3")
        st = unit.get_state("n-p3", for_update=True)
        assert (st.name, st.version) == ("RUNNING", "v1")
        # the lock is known: the compare-and-set on it can wait for the commit
        assert unit.update_state("n-p3", expect_version="v1", name="FINISHED")
    with store.reading() as unit:
        assert unit.get_state("n-p3").name == "FINISHED"


def test_resumed_tasks_read_with_the_nodes_their_calls_ran_at_lock_those_states_in_one_round_trip(store, monkeypatch):
    """The runner names the nodes the resumed tasks' calls ran at: their states are locked in the
    round trip that claims and reads the tasks (MariaDB sent a second query for them). A node
    named wrongly costs that second query, and the state of the node the row names is locked all
    the same."""
    _seed(store)
    with store.transaction() as unit:
        unit.insert_state(StateRecord("n-p1", "root", "root", "RUNNING", "v1", created_time=1.0))
        for tid in ("t1", "t3"):  # their calls ran: they are ours
            unit.claim_task(tid, *LEASE)
    with store.transaction() as unit:
        trips = round_trips(store.dialect, monkeypatch)
        unit.read_tasks_ahead([], ["t1", "t3"], LEASE, ["n-p3", "n-p1"])
        assert len(trips) == 1, trips
        monkeypatch.undo()
        assert _locked_elsewhere(store, "n-p3") and _locked_elsewhere(store, "n-p1")
        task, _ = unit.task_with_process("t3", LEASE, held=True)
        assert task.id == "t3"
        trips = round_trips(store.dialect, monkeypatch)
        assert unit.get_state("n-p3", for_update=True).version == "v1"  # known: no read
        assert unit.update_state("n-p3", expect_version="v1", name="FINISHED")  # deferred
        assert trips == []
        monkeypatch.undo()
    with store.transaction() as unit:
        unit.read_tasks_ahead([], ["t1", "t3"], LEASE, ["n-elsewhere"])  # not where the rows say
        assert _locked_elsewhere(store, "n-p1") and not _locked_elsewhere(store, "n-elsewhere-none")
        task, _ = unit.task_with_process("t1", LEASE, held=True)
        assert task.id == "t1"
        assert unit.update_state("n-p1", expect_version="v1", name="FINISHED")
    with store.reading() as unit:
        assert {n: st.name for n, st in unit.get_states(["n-p1", "n-p3"]).items()} == {
            "n-p1": "FINISHED", "n-p3": "FINISHED"}


def test_a_batch_of_fresh_and_resumed_tasks_is_claimed_and_read_in_one_round_trip(store, monkeypatch):
    _seed(store)  # t2 is leased by a live worker
    with store.transaction() as unit:
        unit.insert_processes([_process("p4")])
        unit.insert_tasks([_task("t4", "p4")])
        for tid in ("t3", "t4"):  # their calls ran: they are ours
            unit.claim_task(tid, *LEASE)
    with store.transaction() as unit:
        trips = round_trips(store.dialect, monkeypatch)
        unit.read_tasks_ahead(["t1", "t2"], ["t3", "t4"], LEASE, ["n-p3", "n-p4"])
        assert len(trips) == 1, trips
        monkeypatch.undo()
        assert {t.id for t, _ in unit.tasks_read_ahead()} == {"t1", "t3", "t4"}
        assert unit.task_with_process("t2", LEASE) == (None, None)
        assert unit.task_with_process("t1", LEASE)[0].id == "t1"
        assert unit.task_with_process("t3", LEASE, held=True)[1].id == "p3"
        assert _locked_elsewhere(store, "n-p3")
        assert unit.update_state("n-p3", expect_version="v1", name="FINISHED")
    with store.reading() as unit:
        assert unit.get_state("n-p3").name == "FINISHED"
        assert unit._one("SELECT owner FROM culm_task WHERE id = ?", ["t1"])[0] == "me"


def test_resumed_tasks_another_runner_holds_are_dropped_and_ours_kept(store):
    _seed(store)  # t2 is leased by a live worker; t3's lease (none) is ours to take again
    with store.transaction() as unit:
        unit.read_tasks_ahead([], ["t2", "t3"], LEASE)
        assert unit.task_with_process("t2", LEASE, held=True) == (None, None)
        task, _ = unit.task_with_process("t3", LEASE, held=True)
        assert task.id == "t3"
    with store.transaction() as unit:  # t3 is leased to us now: another runner cannot claim it
        assert unit.claim_task("t3", "another", 2e9, 1e9) is None


def test_contexts_read_ahead_see_the_units_own_writes_and_give_copies(store):
    with store.transaction() as unit:
        unit.insert_context("root", [ContextValue("${a}", "plain", {"x": 1}), ContextValue("${b}", "plain", 2)])
    with store.transaction() as unit:
        unit.prefetch_contexts(["root", "empty"])
        got = unit.get_context("root", ["${a}"])
        assert got["${a}"].value == {"x": 1}
        got["${a}"].value["x"] = 99  # callers get their own copies
        assert unit.get_context("root", ["${a}"])["${a}"].value == {"x": 1}
        unit.upsert_context("root", [ContextValue("${b}", "plain", 3), ContextValue("${c}", "splice", "${b}")])
        unit.insert_context("empty", [ContextValue("${z}", "plain", 0)])
        assert {k: v.value for k, v in unit.get_context("root").items()} == {"${a}": {"x": 1}, "${b}": 3, "${c}": "${b}"}
        assert unit.get_context("empty", ["${z}", "${missing}"])["${z}"].value == 0
    with store.reading() as unit:
        assert {k: v.value for k, v in unit.get_context("root").items()} == {"${a}": {"x": 1}, "${b}": 3, "${c}": "${b}"}


def test_contexts_over_the_limit_are_not_read_ahead(store):
    with store.transaction() as unit:
        unit.insert_context("root", [ContextValue(f"${{v{i}}}", "plain", i) for i in range(5)])
    with store.transaction() as unit:
        unit.prefetch_contexts(["root"], limit=4)
        unit.upsert_context("root", [ContextValue("${v0}", "plain", 100)])
        assert unit.get_context("root", ["${v0}", "${v4}"])["${v0}"].value == 100
        assert len(unit.get_context("root")) == 5


def test_tasks_deleted_before_their_turn_are_gone(store):
    _seed(store)
    with store.transaction() as unit:
        unit.read_tasks_ahead(["t1", "t3"], [], LEASE)
        unit.kill_processes_of_root("root")
        unit.delete_tasks_of_root("root")  # a revoke in the same transaction
        assert unit.task_with_process("t1", LEASE) == (None, None)


class Held:
    """A dispatcher that keeps the tasks a commit makes, for the batches a test runs itself."""

    def __init__(self) -> None:
        self.tasks: list[TaskRecord] = []

    def submit(self, tasks):
        self.tasks.extend(t for t in tasks if t is not None)

    def submitting(self):
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


def _three_runs(store: SqlStore) -> tuple[Held, list[str]]:
    """Three runs of start -> activity -> end, started; their first tasks (kept, not run) and ids."""
    import culm
    from culm import api, builder

    held = Held()
    rt = culm.Runtime(store.url, workers=0)
    try:
        rt.engine.dispatcher = held
        ids = []
        for _ in range(3):
            start = builder.EmptyStartEvent()
            start.extend(builder.ServiceActivity(component_code="example_component")).extend(builder.EmptyEndEvent())
            tree = builder.build_tree(start)
            assert api.run_pipeline(rt, tree).result
            ids.append(tree["id"])
    finally:
        rt.close()
    return held, ids


def _state(node_id: str, name: str = "RUNNING") -> StateRecord:
    return StateRecord(node_id, "root", "root" if node_id != "root" else "", name, "v1", created_time=1.0)


def _locked_elsewhere(store: SqlStore, row_id: str, table: str = "culm_state", key: str = "node_id") -> bool:
    """Whether another connection finds the row locked (it asks for it without waiting)."""
    with store.engine.connect() as conn:
        try:
            conn.exec_driver_sql(f"SELECT {key} FROM {table} WHERE {key} = '{row_id}' FOR UPDATE NOWAIT")
        except Exception:  # noqa: BLE001 - the driver's "lock not available"
            return True
        finally:
            conn.rollback()
    return False


def test_held_states_states_and_contexts_are_read_ahead_in_one_round_trip(store, monkeypatch):
    with store.transaction() as unit:
        unit.insert_state(_state("root"))
        unit.insert_state(_state("s1", "FINISHED"))
        unit.insert_context("root", [ContextValue("${a}", "plain", 1)])
    with store.transaction() as unit:
        unit.insert_state(_state("s2"))  # a deferred write: it travels with the reads, which see it
        trips = round_trips(store.dialect, monkeypatch)
        unit.read_walks_ahead(["root"], ["s1", "s2", "gone"], ["root", "nothing"])
        assert len(trips) == 1, trips
        held = unit.hold_states(["root"])
        states = unit.get_states(["s1", "s2", "gone"])
        contexts = unit.get_context("root"), unit.get_context("nothing")
        assert len(trips) == 1, trips  # answered from what was read ahead
        monkeypatch.undo()
        assert held["root"].name == "RUNNING"
        assert {k: v.name for k, v in states.items()} == {"s1": "FINISHED", "s2": "RUNNING"}
        assert {k: v.value for k, v in contexts[0].items()} == {"${a}": 1} and contexts[1] == {}
        assert _locked_elsewhere(store, "root")  # held until the commit
        assert not _locked_elsewhere(store, "s1")  # read, not locked
    assert not _locked_elsewhere(store, "root")
    with store.reading() as unit:
        assert unit.get_state("s2").name == "RUNNING"


def test_walks_expected_before_the_claim_are_read_with_it_and_a_wrong_guess_read_after(store, monkeypatch):
    """The walks' reads the runner expects (expect_walks, from the graphs it knows) go in the
    round trip that claims and reads the batch's tasks (MariaDB: its query; PostgreSQL: its
    pipeline), so the walks' own read after it finds nothing left to read; what the guess missed
    is read then. The held states keep their shared locks until the commit."""
    _seed(store)
    with store.transaction() as unit:
        unit.insert_state(_state("root"))
        unit.insert_state(_state("s1", "FINISHED"))
        unit.insert_context("root", [ContextValue("${a}", "plain", 1)])
    with store.transaction() as unit:
        trips = round_trips(store.dialect, monkeypatch)
        unit.expect_walks(["root"], ["s1", "gone"], ["root"])
        unit.read_tasks_ahead(["t1", "t2"], [], LEASE)
        assert len(trips) == 1, trips
        unit.read_walks_ahead(["root"], ["s1", "gone"], ["root"])  # as expected: nothing left to read
        assert len(trips) == 1, trips
        unit.read_walks_ahead(["root"], ["s1", "n-p3"], ["root"])  # n-p3 was not guessed: read now
        assert len(trips) == 2, trips
        held = unit.hold_states(["root"])
        states = unit.get_states(["s1", "gone", "n-p3"])
        context = unit.get_context("root")
        assert len(trips) == 2, trips  # answered from what was read ahead
        monkeypatch.undo()
        assert {t.id for t, _ in unit.tasks_read_ahead()} == {"t1"}
        assert held["root"].name == "RUNNING"
        assert {k: v.name for k, v in states.items()} == {"s1": "FINISHED", "n-p3": "RUNNING"}
        assert {k: v.value for k, v in context.items()} == {"${a}": 1}
        assert _locked_elsewhere(store, "root")  # held until the commit
    assert not _locked_elsewhere(store, "root")


def test_a_state_held_or_written_here_is_held_without_a_read_and_its_writes_wait(store, monkeypatch):
    with store.transaction() as unit:
        unit.insert_state(_state("root"))
    with store.transaction() as unit:
        unit.hold_states(["root"])
        unit.insert_state(_state("sub"))  # entering a subprocess: its state is new, and ours
        trips = round_trips(store.dialect, monkeypatch)
        held = unit.hold_states(["root", "sub"])
        assert not unit.update_state("root", expect_version="v0", name="FAILED")  # an old version
        assert unit.update_state("root", expect_version="v1", expect_names=["RUNNING"], name="FINISHED")
        assert not unit.update_state("root", expect_version="v1", expect_names=["RUNNING"], name="FAILED")
        assert trips == [], trips  # the hold is known, so is each outcome: the write waits
        monkeypatch.undo()
        assert {k: v.name for k, v in held.items()} == {"root": "RUNNING", "sub": "RUNNING"}
        assert unit.get_state("root").name == "FINISHED"
    with store.reading() as unit:
        assert (unit.get_state("root").name, unit.get_state("sub").name) == ("FINISHED", "RUNNING")


def test_children_of_several_parents_are_counted_in_one_round_trip(store, monkeypatch):
    with store.transaction() as unit:
        unit.insert_processes([ProcessRecord(p, "root", None, "gw", None, ["root"], need_ack=3) for p in ("pa", "pb")])
    with store.transaction() as unit:
        unit.update_process("pa", asleep=True)  # a deferred write: it travels with the acks
        trips = round_trips(store.dialect, monkeypatch)
        acked = unit.ack_children({"pb": 1, "pa": 2, "gone": 1})
        assert len(trips) == 1, trips
        monkeypatch.undo()
        assert {p: (r.ack_num, r.need_ack) for p, r in acked.items()} == {"pa": (2, 3), "pb": (1, 3)}
        assert acked["pa"].asleep and not acked["pb"].asleep
        assert all(_locked_elsewhere(store, p, "culm_process", "id") for p in ("pa", "pb"))
    with store.reading() as unit:
        assert (unit.get_process("pa").ack_num, unit.get_process("pb").ack_num) == (2, 1)



def test_joins_decided_with_the_commit_wake_only_the_parent_whose_last_child_arrived(store, monkeypatch):
    """ack_children_at_commit sends the acks and the conditional wakes after the transaction's
    writes, with the parents' read, in the COMMIT's round trip: nothing before it. Only a parent
    whose count reaches need_ack is woken at its gateway, its task written with its run, priority
    and queue; the others keep their counts."""
    procs = [ProcessRecord("pa", "root", None, "fork", None, ["root"], asleep=True, need_ack=3, priority=7, queue="q1"),
             ProcessRecord("pb", "root", None, "fork", None, ["root"], asleep=True, need_ack=2, ack_num=1)]
    with store.transaction() as unit:
        unit.insert_processes(procs)
    woken: list[TaskRecord] = []
    trips = round_trips(store.dialect, monkeypatch)
    with store.transaction() as unit:
        unit.update_process("pa", last_heartbeat=1.0)  # a deferred write: the acks follow it
        assert unit.ack_children_at_commit({"pb": 1, "pa": 2}, {"pa": "gw-a", "pb": "gw-b"}, woken.extend)
        assert trips == [] and woken == []  # all of it waits for the commit
    monkeypatch.undo()
    assert len(trips) == 1 and "COMMIT" in trips[0], trips
    assert [(t.kind, t.process_id, t.node_id, t.root_id, t.priority, t.queue) for t in woken] == [
        (EXECUTE, "pb", "gw-b", "root", 100, "")]
    with store.reading() as unit:
        a, b = unit.get_process("pa"), unit.get_process("pb")
        assert (a.asleep, a.ack_num, a.need_ack, a.current_node_id) == (True, 2, 3, "fork")
        assert (b.asleep, b.ack_num, b.need_ack, b.current_node_id) == (False, 0, 0, "gw-b")
        assert unit.get_task(woken[0].id) == woken[0]
        assert [t.process_id for t in unit.pending_tasks(10**10, 10)] == ["pb"]
    with store.transaction() as unit:  # the last child of pa: woken with its priority and queue
        assert unit.ack_children_at_commit({"pa": 1}, {"pa": "gw-a"}, woken.extend)
    assert [(t.process_id, t.node_id, t.priority, t.queue) for t in woken[1:]] == [("pa", "gw-a", 7, "q1")]
    with store.reading() as unit:
        assert unit.get_task(woken[1].id) == woken[1]
        assert (unit.get_process("pa").asleep, unit.get_process("pa").current_node_id) == (False, "gw-a")
    with store.transaction() as unit, unit.savepoint():  # inside a savepoint: the caller counts itself
        assert not unit.ack_children_at_commit({"pa": 1}, {"pa": "gw-a"}, woken.extend)
    with pytest.raises(RuntimeError), store.transaction() as unit:  # undone: nothing counted nor handed out
        unit.ack_children_at_commit({"pb": 5}, {"pb": "gw-b"}, woken.extend)
        raise RuntimeError("undo")
    assert len(woken) == 2
    with store.reading() as unit:
        assert (unit.get_process("pb").ack_num, len(unit.pending_tasks(10**10, 10))) == (0, 2)


def test_a_join_decided_with_the_commit_whose_parent_is_not_stored_commits_nothing(store):
    """A parent gone (a damaged database) fails the commit, in its round trip: nothing of the
    transaction is kept (not the other parent's count, not the write queued before), nothing is
    handed out. The engine loop then replays the batch task by task, where the join raises and
    fails its node (tests/integration/test_broken_joins.py)."""
    with store.transaction() as unit:
        unit.insert_processes([ProcessRecord("pa", "root", None, "fork", None, ["root"], asleep=True, need_ack=1)])
    woken: list[TaskRecord] = []
    with pytest.raises(Exception, match="(?i)subquery"), store.transaction() as unit:
        unit.update_process("pa", last_heartbeat=1.0)
        assert unit.ack_children_at_commit({"pa": 1, "gone": 1}, {"pa": "gw-a", "gone": "gw"}, woken.extend)
    with pytest.raises(Exception, match="(?i)subquery"), store.transaction() as unit:  # none of them stored
        assert unit.ack_children_at_commit({"gone": 1}, {"gone": "gw"}, woken.extend)
    assert woken == []
    with store.reading() as unit:
        pa = unit.get_process("pa")
        assert (pa.asleep, pa.ack_num, pa.need_ack, pa.last_heartbeat) == (True, 0, 1, None)
        assert unit.pending_tasks(10**10, 10) == []


def test_a_batch_of_runs_new_to_the_engine_reads_their_pipelines_in_one_statement(store, monkeypatch):
    """A worker process meets each run for the first time in a batch: the pipelines of all the
    batch's runs it has not compiled yet are read in one statement, not one per run, and every
    task of the batch moves on as it would have."""
    from culm.core.engine import Engine
    from culm.core.loop import Item, commit_batch

    held, ids = _three_runs(store)
    engine = Engine(store, Held())  # a fresh process: no graph compiled
    trips = round_trips(store.dialect, monkeypatch)
    committed = commit_batch(engine, [Item(TaskRecord(t.id, t.kind, "", "", "")) for t in held.tasks])
    monkeypatch.undo()
    sent = "\n".join(trips)
    assert sent.count("FROM culm_pipeline") == 1, sent
    assert len(committed.calls) == 3  # each run's first activity's code handed out
    with store.reading() as unit:
        assert all(unit.get_state(root).name == "RUNNING" for root in ids)


def test_a_batch_of_runs_the_engine_knows_reads_its_walks_with_the_claim(store, monkeypatch):
    """A batch of resumed tasks whose runs' graphs the engine has compiled: the runner names the
    walks' reads before the claim (the nodes ahead, the stacks from the graph), so the batch is two
    round trips, the claim with every read and the writes with the commit (MariaDB: two queries;
    PostgreSQL: two pipelines). Every run moves on as it would have."""
    from culm.core.engine import Engine
    from culm.core.loop import Item, commit_batch

    held, ids = _three_runs(store)
    engine = Engine(store, Held())
    committed = commit_batch(engine, [Item(t) for t in held.tasks])  # their activities' code handed out
    assert len(committed.calls) == 3
    back = [call.returned(call.run()) for call in committed.calls]
    trips = round_trips(store.dialect, monkeypatch)
    after = commit_batch(engine, back)
    monkeypatch.undo()
    assert len(trips) == 2, "\n".join(trips)
    assert after.calls == [] and sorted(after.done) == sorted(i.task.id for i in back)
    with store.reading() as unit:
        assert all(unit.get_state(root).name == "FINISHED" for root in ids)


def _back_in_two_round_trips(store, monkeypatch, engine, committed, task, ids) -> None:
    """The activity's code handed out by ``committed`` runs; its result is applied in two round
    trips (its locking read with the walk's reads, the writes with the commit) and ends the run
    of ``task`` alone."""
    from culm.core.loop import commit_batch

    assert len(committed.calls) == 1  # the activity's code handed out
    back = committed.calls[0].returned(committed.calls[0].run())
    trips = round_trips(store.dialect, monkeypatch)
    after = commit_batch(engine, [back])
    monkeypatch.undo()
    assert len(trips) == 2, "\n".join(trips)
    assert after.calls == [] and after.done == [task.id]
    with store.reading() as unit:
        assert unit.get_state(task.root_id).name == "FINISHED"
        assert all(unit.get_state(root).name == "RUNNING" for root in ids if root != task.root_id)


@pytest.mark.parametrize("named", ["row", "message"])
def test_a_batch_of_one_task_whose_graph_is_known_claims_and_reads_its_walk_in_one_round_trip(store, monkeypatch, named):
    """A worker's batch is often one task (its runs step one node at a time). When the engine has
    compiled that run's graph, the lone task is read ahead like a batch: its claim (or, back from
    its user code, its locking read) and its walk's reads in one round trip, then the writes with
    the commit: two in all (a lone task read as its walk went: four or more). A task a message
    named (``message``: only its id and kind, as a worker gets it) is claimed first, then its walk's
    reads go together: three; back from its user code its call knows the run and the node, so it is
    read ahead with its claim too. The run moves on as it would have."""
    from culm.core.engine import Engine
    from culm.core.loop import Item, commit_batch

    held, ids = _three_runs(store)
    engine = Engine(store, Held())
    task = held.tasks[0]
    with store.reading() as unit:
        engine.graph(task.root_id, unit)  # compiled here already (a follow-up of a run it stepped)
    trips = round_trips(store.dialect, monkeypatch)
    item = Item(task if named == "row" else TaskRecord(task.id, task.kind, "", "", ""))
    committed = commit_batch(engine, [item])
    monkeypatch.undo()
    assert len(trips) == (2 if named == "row" else 3), "\n".join(trips)
    _back_in_two_round_trips(store, monkeypatch, engine, committed, task, ids)


@pytest.mark.parametrize("message", ["ids only", "run and node", "run, node and walk"])
def test_a_task_of_a_run_new_to_the_process_reads_its_tree_and_walk_with_the_claim(store, monkeypatch, message):
    """The first task of a run a worker has not compiled (the submitter stored the run): a message
    of an older culm names only its id (claim, then the run's tree, then the walk's reads, then the
    writes with the commit: four round trips); one that names the run and the node lets the claim
    read the tree (three); one that also names the walk's reads, as a publisher that has the graph
    sends it, reads tree and walk with the claim (two). The run moves on as it would have."""
    from culm.core.engine import Engine
    from culm.core.loop import Item, commit_batch, expected_walk

    held, ids = _three_runs(store)
    task = held.tasks[0]
    with store.reading() as unit:
        walk = expected_walk(Engine(store, Held()).graph(task.root_id, unit), task.node_id)
    engine = Engine(store, Held())  # this process has compiled none of the runs
    item = {
        "ids only": Item(TaskRecord(task.id, task.kind, "", "", "")),
        "run and node": Item(TaskRecord(task.id, task.kind, "", task.node_id, task.root_id)),
        "run, node and walk": Item(TaskRecord(task.id, task.kind, "", task.node_id, task.root_id), walk=walk),
    }[message]
    trips = round_trips(store.dialect, monkeypatch)
    committed = commit_batch(engine, [item])
    monkeypatch.undo()
    assert len(trips) == {"ids only": 4, "run and node": 3, "run, node and walk": 2}[message], "\n".join(trips)
    _back_in_two_round_trips(store, monkeypatch, engine, committed, task, ids)


def test_a_wrong_walk_in_a_message_costs_only_its_reads(store, monkeypatch):
    """A message's walk is a guess: one naming nodes of another run (or none at all) leaves the
    walk to read what it needs after the claim, and the run moves on as it would have."""
    from culm.core.engine import Engine
    from culm.core.loop import Item, commit_batch

    held, ids = _three_runs(store)
    task, other = held.tasks[0], held.tasks[1]
    engine = Engine(store, Held())
    wrong = ([other.root_id], [other.node_id, "no-such-node"], [other.root_id])
    committed = commit_batch(engine, [Item(TaskRecord(task.id, task.kind, "", task.node_id, task.root_id), walk=wrong)])
    back = committed.calls[0].returned(committed.calls[0].run())
    assert commit_batch(engine, [back]).done == [task.id]
    with store.reading() as unit:
        assert unit.get_state(task.root_id).name == "FINISHED"
        assert unit.get_state(other.root_id).name == "RUNNING" and unit.get_state(other.node_id) is None
