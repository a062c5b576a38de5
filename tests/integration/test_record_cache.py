"""The embedded engine's copies of its own rows (culm.storage.cache) never change what runs.

The copies are only valid while nothing else changes existing rows; these tests change them from
outside the engine thread (another runtime on the same file, an operator command) or mutate values
handed to a component, and check that the engine still acts on what the database holds.
"""

from __future__ import annotations

import components
import pytest
from engine_fixtures import finish, node_state, outputs, run, wait_idle, wait_state

import culm
from culm import api
from culm.builder import Data, EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components import Component, Service

pytestmark = pytest.mark.timeout(60)


class MutateInputsService(Service):
    """Mutates the list and dict it receives, as careless component code does."""

    def execute(self, data, parent_data):
        data.inputs.things.append("mutated")
        data.inputs.cfg["mutated"] = True
        data.outputs.saw = list(data.inputs.things)
        return True


class MutateInputsComponent(Component):
    code = "t_cache_mutate"
    name = "mutate inputs"
    bound_service = MutateInputsService


def act(code: str, **splices: str) -> ServiceActivity:
    a = ServiceActivity(component_code=code)
    for key, template in splices.items():
        setattr(a.component.inputs, key, Var(type=Var.SPLICE, value=template))
    return a


def line(*nodes: ServiceActivity, data: Data | None = None) -> dict:
    start = EmptyStartEvent()
    tail = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(EmptyEndEvent())
    return build_tree(start, data=data)


@pytest.fixture
def embedded(tmp_path):
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db")
    try:
        yield rt
    finally:
        rt.close()


def test_mutating_inputs_does_not_change_the_context_later_nodes_read(embedded):
    data = Data(inputs={"${things}": Var(type=Var.PLAIN, value=["a"]),
                        "${cfg}": Var(type=Var.PLAIN, value={"k": 1})})
    first = act("t_cache_mutate", things="${things}", cfg="${cfg}")
    second = act("t_cache_mutate", things="${things}", cfg="${cfg}")
    tree = line(first, second, data=data)
    finish(embedded, tree)
    assert outputs(embedded, first.id)["saw"] == ["a", "mutated"]
    # the second node reads the context afresh: the first node's mutation is not in it
    assert outputs(embedded, second.id)["saw"] == ["a", "mutated"]
    assert api.get_execution_data_inputs(embedded, second.id).data["cfg"] == {"k": 1, "mutated": True}


def test_command_from_another_runtime_on_the_same_file_is_seen(embedded, tmp_path):
    first, second = act("t_gate", gate="cache-appoint"), act("t_echo", x="${x}")
    tree = line(first, second, data=Data(inputs={"${x}": Var(type=Var.PLAIN, value="v")}))
    run(embedded, tree)
    wait_state(embedded, first.id, "RUNNING")
    # the engine has read (and kept) this run's rows by now; another runtime changes them
    other = culm.Runtime(f"sqlite:///{tmp_path}/t.db", workers=0)
    try:
        assert other.dispatcher is None
        assert api.pause_node_appoint(other, second.id).result
        components.gate("cache-appoint").set()
        wait_state(embedded, first.id, "FINISHED")
        wait_idle(embedded)
        assert node_state(embedded, second.id)["state"] == "SUSPENDED"
        assert api.get_execution_data_outputs(embedded, second.id).data == {}
        assert api.resume_node_appoint(other, second.id).result
    finally:
        other.close()
    wait_state(embedded, tree["id"], "FINISHED")
    assert outputs(embedded, second.id)["out"] == "v!"


def test_retry_with_new_inputs_from_another_runtime(embedded, tmp_path):
    failing = ServiceActivity(component_code="t_fail")
    failing.component.inputs.ok = Var(type=Var.PLAIN, value=False)
    tree = line(failing)
    run(embedded, tree)
    wait_state(embedded, failing.id, "FAILED")
    other = culm.Runtime(f"sqlite:///{tmp_path}/t.db", workers=0)
    try:
        assert api.retry_node(other, failing.id, data={"ok": True}).result
    finally:
        other.close()
    wait_state(embedded, tree["id"], "FINISHED")
    assert outputs(embedded, failing.id)["done"] is True
    assert node_state(embedded, failing.id)["retry"] == 1


def test_a_direct_edit_of_the_file_by_another_connection_is_seen(embedded, tmp_path):
    """A tool writing the SQLite file itself (no culm command, no epoch bump) is still noticed."""
    import sqlite3

    first, second = act("t_gate", gate="cache-raw-edit"), act("t_echo", x="${x}")
    tree = line(first, second, data=Data(inputs={"${x}": Var(type=Var.PLAIN, value="w")}))
    run(embedded, tree)
    wait_state(embedded, first.id, "RUNNING")
    # The root state as pause_pipeline leaves it, written behind culm's back: the engine holds a
    # RUNNING copy of it, and nothing fails if it goes on trusting that copy.
    raw = sqlite3.connect(tmp_path / "t.db", timeout=30)
    try:
        with raw:
            raw.execute("UPDATE culm_state SET name = 'SUSPENDED' WHERE node_id = ?", (tree["id"],))
    finally:
        raw.close()
    components.gate("cache-raw-edit").set()
    wait_state(embedded, first.id, "FINISHED")
    wait_idle(embedded)
    # the process parked before the second node instead of running it
    assert api.get_execution_data_outputs(embedded, second.id).data == {}
    assert api.resume_pipeline(embedded, tree["id"]).result
    wait_state(embedded, tree["id"], "FINISHED")
    assert outputs(embedded, second.id)["out"] == "w!"


def test_large_context_values_are_read_not_kept(embedded):
    from culm.storage.cache import MAX_KEPT_VALUE

    big = "b" * (MAX_KEPT_VALUE + 1)
    data = Data(inputs={"${big}": Var(type=Var.PLAIN, value=big), "${x}": Var(type=Var.PLAIN, value="s")})
    first, second = act("t_echo", x="${x}", blob="${big}"), act("t_echo", x="${x}", blob="${big}")
    tree = line(first, second, data=data)
    finish(embedded, tree)
    assert outputs(embedded, second.id)["blob"] == big
    kept = embedded.dispatcher.cache
    assert tree["id"] in kept.big_contexts and tree["id"] not in kept.contexts


# -- state INSERTs folded with the compare-and-set that finishes them ------------------------


@pytest.fixture
def fold_store(tmp_path):
    """A store with one pipeline's nodes indexed and its root's state stored, and engine copies."""
    from culm.storage.cache import RecordCache
    from culm.storage.sql import SqlStore

    store = SqlStore(f"sqlite:///{tmp_path}/fold.db")
    try:
        with store.transaction() as unit:
            unit.add_nodes([(i, "root", "root", "t") for i in ("root", "a", "b")])
            unit.insert_state(_state("root"))
        yield store, RecordCache()
    finally:
        store.dispose()


def _load_root(unit):
    """Read the root's state through the copies, which loads every state of that root."""
    assert unit.get_states(["root"])["root"].name == "RUNNING"
    assert unit.cache.node_root.get("a") == "root"


def _state(node_id: str, name: str = "RUNNING"):
    from culm.core.records import StateRecord

    return StateRecord(node_id, "root", "root", name, "v1", 1, 1, 0, False, False, 1.0, 1.0, None)


def _stored(store, row_id, verb="get_state"):
    """A state (or with ``verb`` "get_process", a process) as stored, read by another unit."""
    with store.reading() as unit:
        return getattr(unit, verb)(row_id)


def test_a_state_finished_in_its_own_transaction_is_stored_finished(fold_store):
    store, cache = fold_store
    with store.transaction(cache=cache) as unit:
        _load_root(unit)
        unit.insert_state(_state("a"))
        assert not unit.update_state("a", expect_version="v0", name="FINISHED")  # wrong version
        assert not unit.update_state("a", expect_names=["FAILED"], name="FINISHED")  # wrong state
        assert unit.update_state("a", expect_version="v1", expect_names=["RUNNING"], name="FINISHED",
                                 archived_time=2.0, error_ignored=True)
        assert unit.get_state("a").name == "FINISHED"
    st = _stored(store, "a")
    assert (st.name, st.archived_time, st.error_ignored, st.version) == ("FINISHED", 2.0, True, "v1")


def test_statements_after_a_folded_insert_see_the_row(fold_store):
    store, cache = fold_store
    with store.transaction(cache=cache) as unit:
        _load_root(unit)
        unit.insert_state(_state("a"))
        unit.insert_state(_state("b"))
        # A read through SQL, and an UPDATE by parent: both must find the rows not sent yet.
        assert {s.node_id for s in unit.states_of_root("root")} == {"root", "a", "b"}
        unit.reset_inner_loops("root")
        assert unit.update_state("a", expect_version="v1", name="FINISHED")  # now a real UPDATE
    assert (_stored(store, "a").name, _stored(store, "a").inner_loop) == ("FINISHED", 0)
    assert _stored(store, "b").inner_loop == 0


def test_an_undone_savepoint_takes_its_unsent_inserts_with_it(fold_store):
    store, cache = fold_store
    with store.transaction(cache=cache) as unit:
        _load_root(unit)
        unit.insert_state(_state("a"))
        with pytest.raises(RuntimeError), unit.savepoint():
            unit.insert_state(_state("b"))
            raise RuntimeError("undo this part")
    assert _stored(store, "a") is not None
    assert _stored(store, "b") is None


def test_a_stored_state_is_compared_on_its_copy_and_set(fold_store):
    store, cache = fold_store
    with store.transaction(cache=cache) as unit:
        unit.insert_state(_state("a"))
    with store.transaction(cache=cache) as unit:
        _load_root(unit)
        unit.insert_state(_state("b"))  # not sent yet: the compare-and-sets below leave it waiting
        assert not unit.update_state("a", expect_version="v0", name="FINISHED")  # wrong version
        assert not unit.update_state("a", expect_names=["FAILED"], name="FINISHED")  # wrong state
        assert unit.update_state("a", expect_version="v1", expect_names=["RUNNING"], name="FINISHED",
                                 archived_time=2.0)
        assert not unit.update_state("a", expect_names=["RUNNING"], name="FAILED")  # it is FINISHED now
        assert {s.node_id: s.name for s in unit.states_of_root("root")} == {
            "root": "RUNNING", "a": "FINISHED", "b": "RUNNING"}
    st = _stored(store, "a")
    assert (st.name, st.archived_time, st.version) == ("FINISHED", 2.0, "v1")
    assert _stored(store, "b").name == "RUNNING"


def test_children_counted_on_a_kept_parent_are_stored(fold_store):
    from culm.core.records import ProcessRecord

    store, cache = fold_store
    with store.transaction(cache=cache) as unit:
        _load_root(unit)
        unit.insert_processes([ProcessRecord("p", "root", None, "a", None, ["root"], asleep=True, need_ack=3)])
    with store.transaction(cache=cache) as unit:  # one child, then another: the parent sleeps on
        assert unit.ack_children({"p": 1})["p"].ack_num == 1
        assert unit.ack_children({"p": 1})["p"].ack_num == 2
    assert _stored(store, "p", "get_process").ack_num == 2
    with store.transaction(cache=cache) as unit:  # a read through SQL sees the count not sent yet
        assert unit.ack_children({"p": 1})["p"].ack_num == 3
        assert [p.ack_num for p in unit.processes_of_root("root")] == [3]
        unit.update_process("p", asleep=False, ack_num=0, need_ack=0, current_node_id="b")  # the wake
    stored = _stored(store, "p", "get_process")
    assert (stored.ack_num, stored.need_ack, stored.asleep, stored.current_node_id) == (0, 0, False, "b")
    with store.transaction(cache=cache) as unit:  # the last child and the wake in one transaction
        unit.update_process("p", asleep=True, need_ack=1)
        assert unit.ack_children({"p": 1})["p"].ack_num == 1
        unit.update_process("p", asleep=False, ack_num=0, need_ack=0)
    assert (_stored(store, "p", "get_process").ack_num, _stored(store, "p", "get_process").asleep) == (0, False)
    with store.transaction(cache=cache) as unit:  # a count undone with its savepoint is not stored
        with pytest.raises(RuntimeError), unit.savepoint():
            unit.ack_children({"p": 1})
            raise RuntimeError("undo this part")
    assert _stored(store, "p", "get_process").ack_num == 0


# -- a new run's rows written into the copies by run_pipeline's transaction --------------------


def _new_run(unit, root_id: str) -> None:
    """What run_pipeline adds for a run of one node ``root_id + '-a'``: nodes, context, root state,
    process, task."""
    from culm.core.records import EXECUTE, ContextValue, ProcessRecord, StateRecord, TaskRecord

    unit.add_nodes([(root_id, root_id, root_id, "Pipeline"), (f"{root_id}-a", root_id, root_id, "t")])
    unit.insert_context(root_id, [ContextValue("${x}", "plain", ["v"], None, frozenset())])
    unit.insert_state(StateRecord(root_id, root_id, "", "RUNNING", "v1", 1, 1, 0, False, False, 1.0, 1.0, None))
    unit.insert_processes([ProcessRecord(f"{root_id}-p", root_id, None, f"{root_id}-a", None, [root_id])])
    unit.insert_tasks([TaskRecord(f"{root_id}-t", EXECUTE, f"{root_id}-p", f"{root_id}-a", root_id, due=1.0)])


def test_a_new_runs_rows_are_kept_as_written_and_read_as_stored(fold_store):
    store, cache = fold_store
    with store.transaction(cache=cache) as unit:  # the engine's transaction: the copies are current
        _load_root(unit)
    with store.transaction(cache=cache, adds_only=True) as unit:  # run_pipeline's
        _new_run(unit, "new")
    assert set(cache.roots) == {"root", "new"} and cache.node_root["new-a"] == "new"
    with store.transaction(cache=cache) as unit:  # the engine's first step of the run
        assert unit.get_state("new").name == "RUNNING" and unit.get_state("new-a") is None
        assert unit.get_process("new-p").current_node_id == "new-a"
        assert unit.get_task("new-t").node_id == "new-a"
        assert unit.get_context("new")["${x}"].value == ["v"]
        unit.get_context("new")["${x}"].value.append("mutated")  # a copy is handed out
        assert unit.get_context("new")["${x}"].value == ["v"]
    with store.reading() as unit:  # ... all of it stored
        assert (unit.get_state("new").name, unit.get_process("new-p").current_node_id) == ("RUNNING", "new-a")
        assert unit.get_task("new-t").node_id == "new-a" and unit.get_context("new")["${x}"].value == ["v"]


def test_a_command_before_a_new_run_drops_the_copies_it_went_into(fold_store):
    """run_pipeline's transaction does not check that the copies are current (adds_only): a command
    that changed a kept row since the engine's last transaction makes that transaction drop all
    of them, the new run's with the stale ones, and read both as stored."""
    store, cache = fold_store
    with store.transaction(cache=cache) as unit:
        _load_root(unit)
    with store.transaction() as unit:  # an operator command of this process
        unit.announce_change()
        assert unit.update_state("root", name="SUSPENDED")
    with store.transaction(cache=cache, adds_only=True) as unit:
        _new_run(unit, "new")
    with store.transaction(cache=cache) as unit:
        assert unit.get_state("root").name == "SUSPENDED"  # not the RUNNING copy
        assert unit.get_state("new").name == "RUNNING" and unit.get_process("new-p").current_node_id == "new-a"
    with store.transaction() as unit:  # and one after the new run
        unit.announce_change()
        assert unit.update_state("new", name="SUSPENDED")
    with store.transaction(cache=cache) as unit:
        assert unit.get_state("new").name == "SUSPENDED"


def test_a_refused_new_run_leaves_no_copy(fold_store):
    store, cache = fold_store
    with store.transaction(cache=cache) as unit:
        _load_root(unit)
    with pytest.raises(RuntimeError), store.transaction(cache=cache, adds_only=True) as unit:
        _new_run(unit, "new")
        raise RuntimeError("refused")
    assert not cache.roots and not cache.states
    with store.transaction(cache=cache) as unit:
        assert unit.get_state("new") is None and unit.get_process("new-p") is None


def test_runs_submitted_while_the_engine_runs_end_as_stored(embedded):
    """Runs submitted one after another while the engine steps the ones before (their rows go
    into the copies as run_pipeline writes them): each ends with the outputs its context gives."""
    trees, echoes = [], []
    for i in range(12):
        echo = act("t_echo", x="${x}")
        trees.append(line(echo, data=Data(inputs={"${x}": Var(type=Var.PLAIN, value=f"v{i}")})))
        echoes.append(echo)
        run(embedded, trees[-1])
    for i, (tree, echo) in enumerate(zip(trees, echoes, strict=True)):
        wait_state(embedded, tree["id"], "FINISHED")
        assert outputs(embedded, echo.id)["out"] == f"v{i}!"
    wait_idle(embedded)
    kept = embedded.dispatcher.cache
    assert embedded.engine.copies is kept
    with embedded.store.reading() as unit:  # every kept copy of these runs is the row as stored
        for tree in trees:
            if tree["id"] in kept.roots:
                for nid in kept.roots[tree["id"]].nodes:
                    assert unit.get_state(nid) == kept.states.get(nid)
