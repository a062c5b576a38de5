"""prefetch_states: one read for the states a walk needs, kept current with the unit's own writes."""

from __future__ import annotations

import pytest
from backends import create_database, drop_database

from culm.core.records import StateRecord
from culm.storage.migrate import upgrade_database
from culm.storage.sql import SqlStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'view.db'}"
    else:
        url = create_database(request.param)
        upgrade_database(url)
    s = SqlStore(url)
    yield s
    s.dispose()
    if request.param != "sqlite":
        drop_database(url)


def _state(node_id: str, name: str = "RUNNING", version: str = "v1") -> StateRecord:
    return StateRecord(node_id, "root", "root", name, version, created_time=1.0)


def test_reads_after_a_prefetch_see_the_units_own_writes(store):
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
    with store.transaction() as unit:
        unit.prefetch_states(["a", "b"])
        assert set(unit.get_states(["a", "b"])) == {"a"}
        unit.insert_state(_state("b", "READY", "v2"))
        assert unit.update_state("a", expect_version="v1", name="FINISHED", archived_time=2.0)
        got = unit.get_states(["a", "b"])
        assert (got["a"].name, got["a"].archived_time, got["b"].name) == ("FINISHED", 2.0, "READY")
        got["a"].name = "MUTATED"  # callers get copies
        assert unit.get_state("a").name == "FINISHED"
        unit.reset_inner_loops("root")
        assert unit.get_state("b").inner_loop == 0
    with store.reading() as unit:
        got = unit.get_states(["a", "b"])
    assert (got["a"].name, got["b"].name, got["b"].inner_loop) == ("FINISHED", "READY", 0)


def test_a_failed_compare_and_set_is_read_again_and_locking_reads_go_to_the_database(store):
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
    with store.transaction() as unit:
        unit.prefetch_states(["a"])
        assert not unit.update_state("a", expect_version="not-it", name="FAILED")
        assert unit.get_state("a").name == "RUNNING"
        assert unit.get_state("a", for_update=True).version == "v1"


def test_a_savepoint_rollback_forgets_what_the_undone_part_wrote(store):
    with store.transaction() as unit:
        unit.insert_state(_state("a"))
    with store.transaction() as unit:
        unit.prefetch_states(["a", "b"])
        with pytest.raises(RuntimeError), unit.savepoint():
            unit.insert_state(_state("b"))
            unit.update_state("a", expect_version="v1", name="FAILED")
            raise RuntimeError("undo")
        got = unit.get_states(["a", "b"])
        assert set(got) == {"a"} and got["a"].name == "RUNNING"
