"""The storage contract: what every backend guarantees the core, checked on each of them.

One module, parametrised over the memory store, SQLite (a file and ``:memory:``), PostgreSQL and
MariaDB, driving the store's unit API directly (``transaction()`` / ``reading()`` and the unit's
verbs as the core calls them). Every test asserts the rows a second transaction reads back. The guarantees
are listed in docs/distributed.md ("The storage contract").
"""

from __future__ import annotations

import base64
import contextlib
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import create_database, drop_database
from test_faults import kill_sessions

from culm import _json, states
from culm.core.records import EXECUTE, HistoryRecord, ProcessRecord, StateRecord, TaskRecord
from culm.errors import UnstorableValueError
from culm.model.limits import MAX_PAYLOAD_BYTES, payload_size
from culm.storage.memory import MemoryStore
from culm.storage.migrate import upgrade_database
from culm.storage.sql import SqlStore

Store = SqlStore | MemoryStore

pytestmark = pytest.mark.timeout(120)

BACKENDS = ["memory", "sqlite-file", "sqlite-memory", "postgres", "mariadb"]
ONE_WRITER = ("sqlite", "memory")  # backends where one transaction at a time holds the store
THREADS = 6


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per backend for the whole module; every test uses ids of its own."""
    kind = request.param
    url = ""
    s: Store
    if kind == "memory":
        s = MemoryStore()
    elif kind == "sqlite-file":
        s = SqlStore(f"sqlite:///{Path(tmp_path_factory.mktemp('contract')) / 'culm.db'}")
    elif kind == "sqlite-memory":
        s = SqlStore("sqlite://")
    else:
        url = create_database(kind)
        upgrade_database(url)
        s = SqlStore(url)
    yield s
    s.dispose()
    if url:
        drop_database(url)


class Boom(Exception):
    """Raised by a test to roll a transaction or savepoint back."""


def _ids(n: int = 1) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


def _state(node_id: str, root_id: str, name: str = states.READY, version: str = "v0") -> StateRecord:
    return StateRecord(node_id, root_id, root_id, name, version, created_time=1.0)


def _task(task_id: str, root_id: str, due: float = 0.0) -> TaskRecord:
    return TaskRecord(task_id, EXECUTE, "p-" + task_id, "n-" + task_id, root_id, due=due)


def _seed_state(store: Store, node_id: str, root_id: str) -> None:
    with store.transaction() as unit:
        unit.insert_state(_state(node_id, root_id))


def _read_state(store: Store, node_id: str) -> StateRecord | None:
    with store.reading() as unit:
        return unit.get_state(node_id)


def _all_in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads released together; returns their results (errors re-raised)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]
    return results


# -- compare-and-set on state versions ----------------------------------------------------------


def test_cas_wins_once_and_loses_on_stale_version_or_name(store: Store) -> None:
    root, node = _ids(2)
    _seed_state(store, node, root)
    with store.transaction() as unit:
        assert unit.update_state(node, expect_version="v0", expect_names=[states.READY],
                                 name=states.RUNNING, version="v1", started_time=2.0)
    with store.transaction() as unit:
        assert not unit.update_state(node, expect_version="v0", name=states.FAILED)  # stale version
        assert not unit.update_state(node, expect_version="v1", expect_names=[states.READY], name=states.FAILED)
        assert not unit.update_state("no-such-node", expect_version="v1", name=states.FAILED)
    st = _read_state(store, node)
    assert st is not None and (st.name, st.version, st.started_time) == (states.RUNNING, "v1", 2.0)


def test_cas_in_one_transaction_sees_its_own_writes(store: Store) -> None:
    """Locked read, then two CAS in a row (the core's enter-and-leave in one step)."""
    root, node = _ids(2)
    _seed_state(store, node, root)
    with store.transaction() as unit:
        st = unit.get_state(node, for_update=True)
        assert st is not None and st.version == "v0"
        assert unit.update_state(node, expect_version="v0", name=states.RUNNING, version="v1")
        assert not unit.update_state(node, expect_version="v0", name=states.FAILED)
        assert unit.update_state(node, expect_version="v1", expect_names=[states.RUNNING], name=states.FINISHED)
        assert unit.get_state(node).name == states.FINISHED
    st = _read_state(store, node)
    assert st is not None and (st.name, st.version) == (states.FINISHED, "v1")


@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-rolls-back"])
def test_cas_from_two_connections_at_once(store: Store, first_commits: bool) -> None:
    """The second writer waits for the first; it loses if the first commits, wins if it rolls back."""
    root, node = _ids(2)
    _seed_state(store, node, root)
    second_started = threading.Event()
    outcome: dict[str, bool] = {}

    def second() -> None:
        second_started.set()
        with store.transaction() as unit:
            outcome["second"] = unit.update_state(node, expect_version="v0", name=states.FAILED, version="v2")

    thread = threading.Thread(target=second)
    with pytest.raises(Boom) if not first_commits else contextlib.nullcontext(), store.transaction() as unit:
        assert unit.update_state(node, expect_version="v0", name=states.RUNNING, version="v1")
        unit.flush()  # the write is on the server (PostgreSQL defers it otherwise) and its row locked
        thread.start()
        assert second_started.wait(10)
        if not first_commits:
            raise Boom
    thread.join(30)
    assert not thread.is_alive()
    assert outcome == {"second": not first_commits}
    st = _read_state(store, node)
    assert st is not None
    assert (st.name, st.version) == ((states.RUNNING, "v1") if first_commits else (states.FAILED, "v2"))


def test_cas_hammered_from_threads_has_one_winner_per_round(store: Store) -> None:
    root, node = _ids(2)
    _seed_state(store, node, root)
    for round_ in range(3):
        expected = f"v{round_}"

        def attempt(i: int, expected: str = expected, round_: int = round_) -> bool:
            with store.transaction() as unit:
                return unit.update_state(node, expect_version=expected, version=f"v{round_ + 1}",
                                         name=states.RUNNING, retry=i)

        wins = _all_in_threads(THREADS, attempt)
        assert wins.count(True) == 1, wins
        st = _read_state(store, node)
        assert st is not None and st.version == f"v{round_ + 1}" and st.retry == wins.index(True)


# -- leases and claims ----------------------------------------------------------------------------


def test_claim_is_exclusive_until_the_lease_expires(store: Store) -> None:
    root, tid = _ids(2)
    with store.transaction() as unit:
        unit.insert_tasks([_task(tid, root)])
    with store.transaction() as unit:
        got = unit.claim_task(tid, "a", until=110.0, at=100.0)
        assert got is not None and got.id == tid and got.root_id == root
    with store.transaction() as unit:
        assert unit.claim_task(tid, "b", until=120.0, at=105.0) is None  # a's lease is live
        assert unit.task_with_process(tid, ("b", 120.0, 105.0)) == (None, None)
        assert [t.id for t in unit.pending_tasks(105.0, 10) if t.root_id == root] == []
    with store.transaction() as unit:
        unit.extend_leases("a", [tid], 130.0)
        unit.extend_leases("b", [tid], 999.0)  # not b's lease: no effect
    with store.transaction() as unit:
        assert unit.claim_task(tid, "b", until=140.0, at=125.0) is None
        assert [t.id for t in unit.pending_tasks(131.0, 10) if t.root_id == root] == [tid]
        task, _ = unit.task_with_process(tid, ("b", 140.0, 131.0))  # expired: taken over
        assert task is not None and task.id == tid
    with store.reading() as unit:
        assert unit.task_lease(tid) == ("b", 140.0, False, None)
    with store.transaction() as unit:
        unit.release_leases([tid])
    with store.transaction() as unit:
        assert unit.claim_task(tid, "c", until=150.0, at=132.0) is not None


def test_a_claimed_task_comes_with_its_process(store: Store) -> None:
    root, tid, other = _ids(3)
    task = _task(tid, root)
    proc = ProcessRecord(task.process_id, root, None, task.node_id, None, [root], priority=7)
    with store.transaction() as unit:
        unit.insert_processes([proc])
        unit.insert_tasks([task, _task(other, root)])
    with store.transaction() as unit:
        if unit.prefetch is not None:  # a batch's claims, read ahead (PostgreSQL)
            unit.prefetch.read_tasks_ahead([tid, other], [], ("a", 200.0, 100.0))
        got, got_proc = unit.task_with_process(tid, ("a", 200.0, 100.0))
        assert got == task and got_proc is not None and got_proc.stack == [root] and got_proc.priority == 7
        got, got_proc = unit.task_with_process(other, ("a", 200.0, 100.0))
        assert got is not None and got_proc is None  # its process is gone: the task still comes
    with store.transaction() as unit:
        assert unit.task_with_process(tid, ("b", 200.0, 150.0)) == (None, None)


def test_claims_hammered_from_threads_have_one_winner_each(store: Store) -> None:
    root = _ids()[0]
    tids = _ids(4)
    with store.transaction() as unit:
        unit.insert_tasks([_task(t, root) for t in tids])

    def claim(i: int) -> list[str]:
        mine = []
        for n, tid in enumerate(tids):
            with store.transaction() as unit:
                if n % 2:
                    won = unit.claim_task(tid, f"w{i}", until=200.0, at=100.0) is not None
                else:
                    won = unit.task_with_process(tid, (f"w{i}", 200.0, 100.0))[0] is not None
            if won:
                mine.append(tid)
        return mine

    held = _all_in_threads(THREADS, claim)
    claimed = sorted(t for mine in held for t in mine)
    assert claimed == sorted(tids), held  # each task: exactly one holder
    with store.reading() as unit:
        owners = {t.id: unit.task_lease(t.id)[0] for t in unit.tasks_of_root(root, EXECUTE)}
    assert {tid: f"w{i}" for i, mine in enumerate(held) for tid in mine} == owners


# -- the task outbox ------------------------------------------------------------------------------


def _outbox(store: Store, root: str) -> dict[str, tuple[bool, float | None]]:
    """{task id: (published, relayed_at)} of the root's (execute) task rows."""
    with store.reading() as unit:
        leases = {t.id: unit.task_lease(t.id) for t in unit.tasks_of_root(root, EXECUTE)}
    return {tid: (lease[2], lease[3]) for tid, lease in leases.items()}


def test_outbox_insert_publish_relay_delete(store: Store) -> None:
    root, other_root = _ids(2)
    now, due, timer, far = _ids(4)[:4]
    with store.transaction() as unit:
        unit.insert_tasks([_task(now, root, due=10.0), _task(due, root, due=20.0), _task(timer, root, due=50.0),
                           _task(far, other_root, due=10.0)])
    assert _outbox(store, root) == {now: (False, None), due: (False, None), timer: (False, None)}
    with store.transaction() as unit:
        unit.mark_published([now, due], True)
        unit.mark_published([timer], False)
    assert _outbox(store, root) == {now: (True, None), due: (True, None), timer: (False, None)}
    with store.transaction() as unit:
        # At 30 with a grace of 5 and a horizon of 25: both overdue tasks, and the unpublished
        # timer due within the horizon.
        found = [t.id for t in unit.relay_candidates(30.0, 5.0, 25.0, 1000) if t.root_id == root]
        assert found == [now, due, timer]
        unit.mark_relayed(found, 30.0)
    assert _outbox(store, root) == {now: (True, 30.0), due: (True, 30.0), timer: (True, 30.0)}
    with store.transaction() as unit:
        assert [t for t in unit.relay_candidates(32.0, 5.0, 25.0, 1000) if t.root_id == root] == []  # in grace
        unit.delete_task(now)
    with store.transaction() as unit:
        assert unit.get_task(now) is None
        assert sorted(t.id for t in unit.tasks_of_root(root, EXECUTE)) == sorted([due, timer])
        unit.delete_tasks_of_root(root)
    assert _outbox(store, root) == {}
    assert list(_outbox(store, other_root)) == [far]


def test_deleting_a_roots_tasks_never_waits_for_a_claimed_one(store: Store) -> None:
    """An operator's delete skips a task row a running step holds (server databases: SKIP LOCKED;
    the step finds its process dead next time); SQLite runs one writer at a time, so the delete
    simply comes after the step's commit and takes every row."""
    root = _ids()[0]
    held, free = _ids(2)
    with store.transaction() as unit:
        unit.insert_tasks([_task(held, root), _task(free, root)])
    deleted = threading.Event()

    def delete() -> None:
        with store.transaction() as unit:
            unit.delete_tasks_of_root(root)
        deleted.set()

    thread = threading.Thread(target=delete)
    one_writer = store.dialect in ONE_WRITER
    with store.transaction() as unit:
        assert unit.claim_task(held, "step", until=200.0, at=100.0) is not None  # row locked until commit
        thread.start()
        if not one_writer:
            assert deleted.wait(30), "the delete waited for the claimed row"
    thread.join(30)
    assert deleted.is_set()
    assert sorted(_outbox(store, root)) == ([] if one_writer else [held])


# -- histories and logs ---------------------------------------------------------------------------


def test_histories_and_logs_read_back_in_order_per_loop(store: Store) -> None:
    node = _ids()[0]
    with store.transaction() as unit:
        for loop in (1, 1, 2):
            unit.add_history(HistoryRecord(0, node, float(loop), float(loop) + 1, loop, False, loop, f"v{loop}",
                                           {"in": loop}, {"out": [loop]}))
        unit.add_logs([{"node_id": node, "version": "v1", "loop": 1, "created_time": 1.0, "line": f"line {i}"}
                       for i in range(5)])
    with store.transaction() as unit:
        unit.add_logs([{"node_id": node, "version": "v1", "loop": 1, "created_time": 2.0, "line": "last"}])
        with pytest.raises(UnstorableValueError):
            unit.add_logs([{"node_id": node, "version": "v1", "loop": 1, "created_time": 2.0, "line": "a\x00b"}])
    with store.reading() as unit:
        every = unit.histories(node)
        assert [(h.loop, h.inputs, h.outputs) for h in every] == [
            (1, {"in": 1}, {"out": [1]}), (1, {"in": 1}, {"out": [1]}), (2, {"in": 2}, {"out": [2]})]
        assert [h.id for h in every] == sorted(h.id for h in every)
        assert [h.version for h in unit.histories(node, loop=2)] == ["v2"]
        assert unit.histories(node, loop=3) == []
        assert unit.logs(node, "v1") == [f"line {i}" for i in range(5)] + ["last"]
    with store.transaction() as unit:
        unit.retag_logs(node, "v1", "v9")
    with store.reading() as unit:
        assert unit.logs(node, "v1") == [] and len(unit.logs(node, "v9")) == 6


def test_histories_read_within_a_budget_keep_the_newest_payloads(store: Store) -> None:
    node = _ids()[0]
    with store.transaction() as unit:
        for n in range(5):
            unit.add_history(HistoryRecord(0, node, 1.0, 2.0, 1 + n // 3, False, n, f"v{n}", {"in": "x" * 1000},
                                           {"n": n}))
    with store.reading() as unit:
        assert all(h.left_out is None and h.inputs for h in unit.histories(node))  # no budget: all, as before
        read = unit.histories(node, payload_chars=2_100)  # each stores ~1,020 characters: two fit
        assert [h.retry for h in read] == [0, 1, 2, 3, 4]  # every history, oldest first
        assert [h.outputs for h in read] == [{}, {}, {}, {"n": 3}, {"n": 4}]
        assert [h.left_out is not None and h.left_out > 1_000 for h in read] == [True, True, True, False, False]
        assert [h.retry for h in unit.histories(node, payload_chars=10) if h.left_out is None] == [4]  # the newest
        assert all(h.left_out and h.inputs == {} for h in unit.histories(node, payload_chars=0))
        assert [(h.loop, h.outputs) for h in unit.histories(node, loop=1, payload_chars=1_100)] == [
            (1, {}), (1, {}), (1, {"n": 2})]


def test_a_large_tree_is_stored_compressed_and_read_back_exactly(store: Store) -> None:
    """A tree over MAX_PAYLOAD_BYTES as JSON that compresses under it is stored (a 10,000-node tree
    takes ~7 MB as JSON); a value that merely looks like the compressed envelope is kept as it is."""
    root, lookalike = _ids(2)
    nodes = {f"n{i:05d}": {"id": f"n{i:05d}", "type": "ServiceActivity", "incoming": [f"f{i}"],
                           "outgoing": f"f{i + 1}", "component": {"code": "example_component", "inputs": {}},
                           "error_ignorable": False, "skippable": True, "retryable": True} for i in range(32_000)}
    tree = {"id": root, "activities": nodes, "flows": {}}
    assert payload_size(_json.dumps(tree)) > MAX_PAYLOAD_BYTES  # as a MySQL statement counts it
    fake = {_json.ZLIB_KEY: base64.b64encode(zlib.compress(b'"not culm\'s"')).decode("ascii")}
    with store.transaction() as unit:
        unit.add_pipeline(root, tree, {}, {}, at=1.0)
        unit.add_pipeline(lookalike, {"id": lookalike, "data": fake}, {}, {}, at=1.0)
        unit.set_execution_data(lookalike, {"x": fake}, {})
    with store.reading() as unit:
        stored = unit.get_pipeline(root)
        assert stored is not None and stored[0] == tree
        other = unit.get_pipeline(lookalike)
        assert other is not None and other[0] == {"id": lookalike, "data": fake}
        assert unit.get_execution_data(lookalike) == ({"x": fake}, {})



def test_several_pipelines_are_read_at_once_and_unknown_ones_left_out(store: Store) -> None:
    a, b, unknown = _ids(3)
    with store.transaction() as unit:
        unit.add_pipeline(a, {"id": a}, {"x": 1}, {"o": True}, at=1.0)
        unit.add_pipeline(b, {"id": b}, {}, {}, at=2.0)
    with store.reading() as unit:
        got = unit.get_pipelines([a, unknown, b])
        assert got == {a: ({"id": a}, {"x": 1}, {"o": True}), b: ({"id": b}, {}, {})}
        assert got[a] == unit.get_pipeline(a)
        assert unit.get_pipelines([]) == {}


# -- execution data -------------------------------------------------------------------------------


def test_execution_data_json_and_pickle_fallback(store: Store) -> None:
    plain, odd = _ids(2)
    exact = {"tags": {"a", "b"}, "pair": (1, 2), "clash": {1: "int", "1": "str"}}
    with store.transaction() as unit:
        unit.set_execution_data(plain, {"x": 1, "t": (1, 2)}, {"ok": True})
        unit.set_execution_data(odd, {"x": 1}, exact)
    with store.transaction() as unit:
        assert unit.get_execution_data(plain) == ({"x": 1, "t": [1, 2]}, {"ok": True})  # JSON: tuple -> list
        assert unit.get_execution_data(odd) == ({"x": 1}, exact)  # pickled: back exactly
        unit.set_execution_outputs(plain, {"ok": False})
        with pytest.raises(UnstorableValueError) as refused:
            unit.set_execution_data(odd, {"lock": threading.Lock()}, {})
        assert refused.value.keys == ["lock"]
    with store.reading() as unit:
        assert unit.get_execution_data(plain) == ({"x": 1, "t": [1, 2]}, {"ok": False})
        assert unit.get_execution_data(odd) == ({"x": 1}, exact)  # the refusal wrote nothing
        assert unit.get_execution_data("no-such-node") is None


# -- the change feed and savepoints ---------------------------------------------------------------


def _changes_of(store: Store, root: str) -> list[tuple[str, str | None, str]]:
    return [(c.node_id, c.from_state, c.to_state) for c in store.feed.read(0, store.feed.last_seq(), root)]


def test_change_feed_is_written_with_its_states_or_not_at_all(store: Store) -> None:
    root, a, b = _ids(3)
    after = store.feed.last_seq()
    with store.transaction() as unit:
        unit.insert_state(_state(a, root))
        unit.record_change(root, a, None, states.READY, "v0", 1)
        assert unit.update_state(a, expect_version="v0", name=states.RUNNING)
        unit.record_change(root, a, states.READY, states.RUNNING, "v0", 1)
    with pytest.raises(Boom), store.transaction() as unit:
        unit.insert_state(_state(b, root))
        unit.record_change(root, b, None, states.READY, "v0", 1)
        raise Boom
    assert _read_state(store, b) is None
    assert _changes_of(store, root) == [(a, None, states.READY), (a, states.READY, states.RUNNING)]
    with store.transaction() as unit:
        assert unit.update_state(a, expect_version="v0", name=states.FINISHED)
        unit.record_change(root, a, states.RUNNING, states.FINISHED, "v0", 1)
    seen = [(c.node_id, c.to_state) for c in store.feed.changes(root, after, timeout=1.5)]
    assert seen == [(a, states.READY), (a, states.RUNNING), (a, states.FINISHED)]  # each once


def test_feed_reads_by_range_root_and_limit(store: Store) -> None:
    root, other, node = _ids(3)
    with store.transaction() as unit:
        unit.add_pipeline(root, {"id": root}, {}, {}, at=123.5)
        before = unit.last_change_seq()
    with store.transaction() as unit:
        for n, (r, to) in enumerate([(root, "A"), (other, "B"), (root, "C"), (root, "D")]):
            unit.record_change(r, node, None, to, f"v{n}", n)
    with store.reading() as unit:
        last = unit.last_change_seq()
        assert last >= before + 4 and unit.first_change_seq() is not None
        mine = unit.read_changes(before, last, root, 10)
        assert [(c.to_state, c.version, c.loop) for c in mine] == [("A", "v0", 0), ("C", "v2", 2), ("D", "v3", 3)]
        assert [c.seq for c in mine] == sorted(c.seq for c in mine)
        assert [c.to_state for c in unit.read_changes(before, last, None, 2)] == ["A", "B"]
        assert [c.to_state for c in unit.read_changes(mine[0].seq, mine[1].seq, None, 10)] == ["B", "C"]
        assert unit.change_time_from(mine[-1].seq) == mine[-1].time
        assert unit.change_time_from(last + 1) is None
        assert unit.pipeline_created(root) == 123.5 and unit.pipeline_created(other) is None
        seen, pairs = unit.changes_since(before, last - before)
        assert seen == last and sorted(pairs) == sorted([(root, node), (other, node)])  # each pair once
        assert unit.changes_since(before, mine[0].seq - before) == (last, [(root, node)])  # up to after + most
        assert unit.changes_since(last, 10) == (last, [])
        # One root's named nodes, each once, with their state rows (None: no row).
        assert unit.changed_states(root, before, last) == [(node, None)]
        assert unit.changed_states(other, before, mine[0].seq) == []  # within (after, upto] only
        assert unit.changed_states(root, last, last + 10) == []
    with store.transaction() as unit:
        unit.insert_state(StateRecord(node, root, root, states.RUNNING, "v9"))
        unit.record_change(other, root, None, "E", "v4", 4)
    with store.reading() as unit:
        named = unit.changed_states(root, before, unit.last_change_seq())
        assert [(n, st.name if st else None) for n, st in named] == [(node, states.RUNNING)]
        named = unit.changed_states(other, mine[0].seq, unit.last_change_seq())
        assert len(named) == 2 and dict(named) == {node: unit.get_state(node), root: unit.get_state(root)}


def test_reset_inner_loops_notes_each_row_it_changes_in_the_feed(store: Store) -> None:
    """Every state-row write is in the feed (the kept state trees read only the nodes it names):
    the reset writes a note (from_state == to_state) per row it changes, which runtime.changes
    does not yield as a transition."""
    root, sub, a, b, elsewhere = _ids(5)
    with store.transaction() as unit:
        for node in (a, b):
            unit.insert_state(StateRecord(node, root, sub, states.FINISHED, "v-" + node, loop=2, inner_loop=2))
        unit.insert_state(StateRecord(elsewhere, root, root, states.FINISHED, "v0", inner_loop=2))
        unit.insert_state(StateRecord(sub, root, root, states.RUNNING, "v0", inner_loop=0))
    after = store.feed.last_seq()
    with store.transaction() as unit:
        unit.reset_inner_loops(sub)
    with store.reading() as unit:
        assert {n: unit.get_state(n).inner_loop for n in (a, b, elsewhere)} == {a: 0, b: 0, elsewhere: 2}
        notes = unit.read_changes(after, unit.last_change_seq(), root, 10)
    assert sorted((c.node_id, c.from_state, c.to_state, c.version, c.loop) for c in notes) == sorted(
        (n, states.FINISHED, states.FINISHED, "v-" + n, 2) for n in (a, b))
    assert list(store.feed.changes(root, after, timeout=0)) == []  # notes are no transitions
    again = store.feed.last_seq()
    with store.transaction() as unit:
        unit.reset_inner_loops(sub)  # nothing left to change: no note
    assert store.feed.last_seq() == again


def test_savepoint_rollback_keeps_the_earlier_writes(store: Store) -> None:
    root, kept, undone = _ids(3)
    tid = _ids()[0]
    with store.transaction() as unit:
        unit.insert_state(_state(kept, root))
        unit.record_change(root, kept, None, states.READY, "v0", 1)
        with pytest.raises(Boom), unit.savepoint():
            assert unit.update_state(kept, expect_version="v0", name=states.FAILED, version="vX")
            unit.insert_state(_state(undone, root))
            unit.record_change(root, undone, None, states.READY, "v0", 1)
            unit.insert_tasks([_task(tid, root)])
            unit.set_execution_data(undone, {"a": 1}, {})
            raise Boom
        # The undone part's CAS is forgotten: the row is as the outer transaction left it.
        assert unit.update_state(kept, expect_version="v0", expect_names=[states.READY], name=states.RUNNING)
        unit.record_change(root, kept, states.READY, states.RUNNING, "v0", 1)
        with unit.savepoint():  # a savepoint that ends well keeps its writes
            unit.set_execution_data(kept, {"b": 2}, {})
    st = _read_state(store, kept)
    assert st is not None and (st.name, st.version) == (states.RUNNING, "v0")
    assert _read_state(store, undone) is None
    with store.reading() as unit:
        assert unit.get_task(tid) is None
        assert unit.get_execution_data(undone) is None
        assert unit.get_execution_data(kept) == ({"b": 2}, {})
    assert _changes_of(store, root) == [(kept, None, states.READY), (kept, states.READY, states.RUNNING)]


def test_feed_yields_each_change_of_concurrent_writers_once(store: Store) -> None:
    """Writers committing in any order (server databases may commit seqs out of order), some
    rolling back: the feed yields every committed change exactly once."""
    root = _ids()[0]
    nodes = _ids(THREADS)
    after = store.feed.last_seq()

    def write(i: int) -> None:
        for n in range(3):
            try:
                with store.transaction() as unit:
                    if n == 0:
                        unit.insert_state(_state(nodes[i], root))
                    unit.record_change(root, nodes[i], None, f"S{n}", "v0", 1)
                    if n == 1:
                        raise Boom  # rolled back: leaves nothing (a hole in seq on servers)
            except Boom:
                pass

    _all_in_threads(THREADS, write)
    seen = [(c.node_id, c.to_state) for c in store.feed.changes(root, after, timeout=1.5)]
    assert sorted(seen) == sorted((node, s) for node in nodes for s in ("S0", "S2"))


# -- converging processes and schedules -----------------------------------------------------------


def test_child_acks_are_counted_once_each_under_concurrency(store: Store) -> None:
    """The last branch of a join is known by its ack count: each sibling sees a distinct count."""
    root, parent = _ids(2)
    with store.transaction() as unit:
        unit.insert_processes([ProcessRecord(parent, root, None, "gw", None, [root], need_ack=THREADS)])

    def ack(_i: int) -> tuple[int, int]:
        with store.transaction() as unit:
            proc = unit.ack_children({parent: 1}).get(parent)
            assert proc is not None and proc.id == parent and proc.root_id == root and proc.stack == [root]
            return proc.ack_num, proc.need_ack

    counts = _all_in_threads(THREADS, ack)
    assert sorted(counts) == [(n, THREADS) for n in range(1, THREADS + 1)]
    with store.transaction() as unit:  # a parent not stored is left out, on every store
        assert unit.ack_children({_ids(1)[0]: 1}) == {}
    with store.reading() as unit:
        proc = unit.get_process(parent)
    assert proc is not None and proc.ack_num == THREADS


def test_a_schedule_is_locked_by_one_caller_until_the_lock_expires(store: Store) -> None:
    from culm.core.records import ScheduleRecord

    sid, node = _ids(2)
    with store.transaction() as unit:
        unit.insert_schedule(ScheduleRecord(sid, node, "v1", "p", "poll"))

    def lock(_i: int) -> bool:
        with store.transaction() as unit:
            return unit.lock_schedule(sid, 110.0, 100.0)

    assert _all_in_threads(THREADS, lock).count(True) == 1
    with store.transaction() as unit:
        assert not unit.lock_schedule(sid, 120.0, 105.0)
        assert unit.lock_schedule(sid, 130.0, 111.0)  # expired: taken
        unit.update_schedule(sid, times=3, finished=True)
    with store.reading() as unit:
        sched = unit.schedule_of(node, "v1")
        assert sched is not None and (sched.locked_until, sched.times, sched.finished) == (130.0, 3, True)
        assert unit.live_schedules([node]) == []
        assert [s.id for s in unit.schedules_of_nodes([node, "no-such-node"])] == [sid]  # finished ones too


def test_a_schedule_call_lock_is_held_by_the_task_with_a_live_lease(store: Store) -> None:
    """The lock names no holder: a task of the schedule with a live lease holds it, past the
    lock's time too. Once that lease is freed (its worker was buried) another task of the
    schedule takes the lock at once; of two takers, one wins."""
    from culm.core.records import SCHEDULE, ScheduleRecord

    sid, node, root, held, *waiting = _ids(4 + THREADS)
    with store.transaction() as unit:
        unit.insert_schedule(ScheduleRecord(sid, node, "v1", "p", "multiple_callback"))
        unit.insert_tasks([TaskRecord(t, SCHEDULE, "p", node, root, schedule_id=sid) for t in (held, *waiting)])
        assert unit.claim_task(held, "dead-worker", 130.0, 100.0) is not None
        assert unit.lock_schedule(sid, 130.0, 100.0)
    with store.transaction() as unit:
        assert not unit.lock_schedule(sid, 140.0, 110.0)
        assert not unit.lock_schedule_call(sid, root, waiting[0], 140.0, 110.0)  # its holder lives
        unit.extend_leases("dead-worker", [held], 150.0)  # its call runs on past the lock's time
        assert not unit.lock_schedule_call(sid, root, waiting[0], 160.0, 135.0)
    with store.transaction() as unit:
        unit.release_leases([held])  # the dead worker is buried

    def take(i: int) -> bool:
        with store.transaction() as unit:  # each runner claims its callback's task, then the lock
            assert unit.claim_task(waiting[i], f"runner-{i}", 140.0, 110.0) is not None
            return unit.lock_schedule_call(sid, root, waiting[i], 140.0, 110.0)

    assert _all_in_threads(THREADS, take).count(True) == 1
    with store.reading() as unit:
        sched = unit.get_schedule(sid)
        assert sched is not None and sched.locked_until == 140.0


def test_callbacks_take_their_turn_in_the_order_they_were_accepted(store: Store) -> None:
    """Each callback of a run is numbered after the run's earlier ones (another run's do not
    count); the task whose turn it is carries the first callback still waiting, and the next one's
    once that task is gone."""
    from culm.core.records import SCHEDULE

    node, root, *cbs = _ids(6)
    tasks = _ids(4)
    with store.transaction() as unit:
        for i, cb in enumerate(cbs):
            unit.insert_callback(cb, node, "v2" if i == 3 else "v1", {"n": i})
        # Task rows in another order than their callbacks': the callbacks' order decides.
        unit.insert_tasks([TaskRecord(tasks[i], SCHEDULE, "p", node, root, callback_id=cbs[i], running_version=v)
                           for i, v in ((2, "v1"), (0, "v1"), (3, "v2"), (1, "v1"))])
    with store.reading() as unit:
        assert unit.first_callback_task(root, node, "v1") == tasks[0]
        assert unit.first_callback_task(root, node, "v2") == tasks[3]
        assert unit.first_callback_task(root, node, "v3") is None
        assert unit.get_callback(cbs[2]) == {"n": 2}
    for expected in (tasks[1], tasks[2], None):
        with store.transaction() as unit:
            unit.delete_task(unit.first_callback_task(root, node, "v1"))
        with store.reading() as unit:
            assert unit.first_callback_task(root, node, "v1") == expected


def test_states_read_ahead_see_the_transactions_own_writes(store: Store) -> None:
    root, a, b, missing = _ids(4)
    _seed_state(store, a, root)
    with store.transaction() as unit:
        if unit.prefetch is not None:
            unit.prefetch.prefetch_states([a, b, missing])
        assert unit.get_state(b) is None
        unit.insert_state(_state(b, root))
        assert unit.update_state(a, expect_version="v0", name=states.RUNNING, version="v1")
        got = unit.get_states([a, b, missing])
        assert {k: (v.name, v.version) for k, v in got.items()} == {a: (states.RUNNING, "v1"), b: (states.READY, "v0")}
        got[a].name = "CHANGED BY CALLER"  # a caller's copy, not the unit's view
        assert unit.get_state(a).name == states.RUNNING
    with store.reading() as unit:
        assert {k: v.name for k, v in unit.get_states([a, b]).items()} == {a: states.RUNNING, b: states.READY}


def test_an_error_in_the_work_is_not_an_interruption(store: Store) -> None:
    root, node = _ids(2)
    _seed_state(store, node, root)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each backend raises its own kind
        with store.transaction() as unit:
            unit.insert_state(_state(node, root))  # the same node twice
    assert not store.is_interruption(caught.value)
    assert not store.is_interruption(Boom("user code"))
    assert _read_state(store, node) is not None  # the first row is kept


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_connection_killed_in_a_transaction_is_an_interruption(kind: str) -> None:
    url = create_database(kind)
    upgrade_database(url)
    s = SqlStore(url)
    try:
        root, node = _ids(2)
        _seed_state(s, node, root)
        with pytest.raises(Exception) as caught:  # noqa: PT011 - the driver's own error
            with s.transaction() as unit:
                assert unit.get_state(node) is not None
                kill_sessions(url, in_flight_timeout=0)
                unit.get_state(node)
        assert s.is_interruption(caught.value), repr(caught.value)
    finally:
        s.dispose()
        drop_database(url)


def test_a_database_that_cannot_be_reached_is_an_interruption(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/no/such/dir/culm.db", "postgresql+psycopg://postgres@127.0.0.1:1/test",
                "mysql+pymysql://root@127.0.0.1:1/test"):
        s = SqlStore(url, create=False)
        try:
            with pytest.raises(Exception) as caught:  # noqa: PT011 - the driver's own error
                with s.reading() as unit:
                    unit.get_state("n")
            assert s.is_interruption(caught.value), (url, repr(caught.value))
        finally:
            s.dispose()
