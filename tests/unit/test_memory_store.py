"""What only the memory store promises (the rest is the storage contract suite's, which runs on it
too): a crash keeps exactly what was committed, layers stay apart, bad writes are refused by name."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import culm
from culm import states
from culm.components import Component, Service, library
from culm.core.records import EXECUTE, StateRecord, TaskRecord
from culm.errors import InvalidOperationError
from culm.storage.memory import MemoryStore, MemoryStoreError
from culm.testing import memory_runtime, run_until_done


class Boom(Exception):
    pass


def _state(node_id: str, name: str = states.READY, version: str = "v0") -> StateRecord:
    return StateRecord(node_id, "root", "root", name, version)


def _name(store: MemoryStore, node_id: str) -> str | None:
    with store.reading() as unit:
        st = unit.get_state(node_id)
    return st.name if st is not None else None


def test_a_crash_keeps_what_was_committed_and_loses_the_open_transaction() -> None:
    store = MemoryStore()
    with store.transaction() as unit:
        unit.insert_state(_state("kept"))
        unit.record_change("root", "kept", None, states.READY, "v0", 1)
    after: MemoryStore | None = None
    with pytest.raises(MemoryStoreError, match="reopened"), store.transaction() as unit:
        assert unit.update_state("kept", expect_version="v0", name=states.RUNNING)
        unit.insert_state(_state("lost"))
        unit.insert_tasks([TaskRecord("t1", EXECUTE, "p", "lost", "root")])
        unit.record_change("root", "lost", None, states.READY, "v0", 1)
        after = store.reopen()  # the process dies here; the commit below can never happen
    assert after is not None
    assert _name(after, "kept") == states.READY and _name(after, "lost") is None
    with after.reading() as unit:
        assert unit.get_task("t1") is None
        assert [(c.node_id, c.to_state) for c in unit.read_changes(0, 100, None, 100)] == [("kept", states.READY)]
    with after.transaction() as unit:  # the reopened store takes writes again
        assert unit.update_state("kept", expect_version="v0", name=states.RUNNING)
    assert _name(after, "kept") == states.RUNNING


def test_nested_savepoints_undo_only_their_own_layer() -> None:
    store = MemoryStore()
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
        with unit.savepoint():
            assert unit.update_state("a", name=states.RUNNING)
            with pytest.raises(Boom), unit.savepoint():
                assert unit.update_state("a", name=states.FAILED)
                unit.insert_state(_state("b"))
                raise Boom
            assert unit.get_state("a").name == states.RUNNING and unit.get_state("b") is None
        unit.insert_state(_state("b"))  # the undone insert left no key behind
    assert (_name(store, "a"), _name(store, "b")) == (states.RUNNING, states.READY)


def test_a_reader_sees_only_committed_rows() -> None:
    store = MemoryStore()
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
        assert _name(store, "a") is None  # a read inside the open transaction (same thread)
    seen: list[str | None] = []
    writing, read = threading.Event(), threading.Event()

    def reader() -> None:
        writing.wait(10)
        seen.append(_name(store, "a"))  # waits for the writer's commit
        read.set()

    thread = threading.Thread(target=reader)
    thread.start()
    with store.transaction() as unit:
        assert unit.update_state("a", name=states.RUNNING)
        writing.set()
        assert not read.wait(0.2)  # the reader waits for the commit
    thread.join(10)
    assert seen == [states.RUNNING]


def test_refusals_name_the_table_and_row() -> None:
    store = MemoryStore()
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
    with pytest.raises(MemoryStoreError, match="table state already has a row 'a'"), store.transaction() as unit:
        unit.insert_state(_state("a"))
    with pytest.raises(MemoryStoreError, match="no column.*colour"), store.transaction() as unit:
        unit.update_state("a", colour="red")
    with pytest.raises(MemoryStoreError, match="already open"), store.transaction(), store.transaction():
        pass
    assert _name(store, "a") == states.READY


class _Done(Service):
    def execute(self, data: Any, parent_data: Any) -> bool:
        return True


@pytest.fixture
def done_code() -> Iterator[str]:
    """A registered component that succeeds at once (unregistered after the test)."""
    code = f"memory_store_done_{uuid.uuid4().hex[:8]}"
    type("DoneComponent", (Component,), {"__module__": __name__, "__qualname__": "DoneComponent", "code": code,
                                         "name": "done", "bound_service": _Done})
    yield code
    for version in library.versions(code):
        library.unregister(code, version)


def test_a_memory_runtime_runs_a_pipeline_and_refuses_a_broker(done_code: str) -> None:
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code=done_code)).extend(EmptyEndEvent())
    tree = build_tree(start)
    with memory_runtime() as rt:
        assert repr(rt) == "Runtime('memory://', embedded)"
        assert run_until_done(rt, tree) == states.FINISHED
        assert [c.to_state for c in rt.changes(tree["id"], timeout=0) if c.node_id == tree["id"]] == [
            states.RUNNING, states.FINISHED]
    with pytest.raises(InvalidOperationError, match="memory://"):
        culm.Runtime("memory://", broker="redis://localhost:6379/0")


def test_the_service_refuses_a_memory_runtime_by_name() -> None:
    from culm.web.app import create_app

    with culm.Runtime("memory://", workers=0) as rt, pytest.raises(InvalidOperationError, match="memory://"):
        create_app(rt)


def test_pruning_the_feed_is_part_of_its_transaction() -> None:
    store = MemoryStore()
    with store.transaction() as unit:
        unit.insert_state(StateRecord("root", "root", "", states.FINISHED, "v0"))
        for to in (states.RUNNING, states.FINISHED, states.FINISHED):
            unit.record_change("root", "root", None, to, "v0", 1)
    with pytest.raises(Boom), store.transaction() as unit:
        assert unit.prune_changes(1, 3, cutoff=float("inf")) == 2
        raise Boom
    with store.reading() as unit:
        assert [c.seq for c in unit.read_changes(0, 10, "root", 10)] == [1, 2, 3]
    assert store.feed.prune(older_than=-60) == 2  # the newest row always stays
    with store.reading() as unit:
        assert [c.seq for c in unit.read_changes(0, 10, None, 10)] == [3]
