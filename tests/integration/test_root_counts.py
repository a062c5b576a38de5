"""The kept counts of root pipelines per state (``culm_root_count``, migration 0007): what an
unfiltered ``list_pipelines`` reports without reading every root. They must equal a full count of
the root states at every commit: under concurrent workers, after revoke, pause and resume, after
pruning the feed, and on a database migrated with pipelines already stored."""

from __future__ import annotations

import threading
import uuid

import pytest
from alembic import command
from components import gate
from engine_fixtures import run, wait_state
from test_list_pipelines import named_tree

import culm
from culm import api
from culm.storage import migrate, schema
from culm.storage.listing import root_deltas
from culm.storage.sql import SqlStore
from culm.storage.sql.statements import ROOT_COUNTS, ROOTS_COUNTED

pytestmark = pytest.mark.timeout(180)


def kept_and_counted(store: SqlStore) -> tuple[dict[str, int], dict[str, int]]:
    """(the kept counts, a full count of the root states), read in one snapshot."""
    with store.reading(snapshot=True) as unit:
        kept = {str(r[0]): int(r[1]) for r in unit._all(ROOT_COUNTS) if r[1]}
        counted = {str(r[0]): int(r[1]) for r in unit._all(ROOTS_COUNTED)}
    return kept, counted


def assert_exact(store: SqlStore) -> dict[str, int]:
    kept, counted = kept_and_counted(store)
    assert kept == counted
    return kept


def test_root_deltas_count_only_a_roots_own_moves():
    changes = [
        ("r1", "r1", None, "RUNNING"),  # a new root
        ("r1", "n1", None, "RUNNING"),  # a node of it: not a root
        ("r2", "r2", "RUNNING", "FINISHED"),
        ("r3", "r3", "RUNNING", "RUNNING"),  # a note: no move
        ("r4", "r4", "RUNNING", "SUSPENDED"),
        ("r4", "r4", "SUSPENDED", "RUNNING"),  # back within the same transaction: no net move
    ]
    assert root_deltas(changes) == {"FINISHED": 1}
    assert root_deltas(changes[:1]) == {"RUNNING": 1}


@pytest.fixture(params=["sqlite", "postgres-redis", "mariadb-rabbitmq"])
def counted_runtime(request, tmp_path):
    if request.param == "sqlite":
        with culm.Runtime(f"sqlite:///{tmp_path / 'c.db'}") as rt:
            yield rt
        return
    yield request.getfixturevalue("backend_pool").shared_runtime(request.param)


def test_counts_stay_exact_under_concurrent_pipelines_revoke_pause_and_pruning(counted_runtime):
    """Pipelines submitted from several threads at once, run by the workers (two `culm worker`s of two pool
    processes each on a server): the kept counts equal a full count at every point checked."""
    rt = counted_runtime
    tag = uuid.uuid4().hex[:8]
    plain = [named_tree(f"plain-{tag}-{i}") for i in range(40)]
    failing = [named_tree(f"fail-{tag}-{i}", code="t_fail") for i in range(2)]
    gated = [named_tree(f"gated-{tag}-{i}", code="t_gate") for i in range(2)]
    submitted = plain + failing + gated
    threads = [threading.Thread(target=lambda part=submitted[i::4]: [run(rt, t) for t in part]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    revoked, paused = gated[0]["id"], gated[1]["id"]
    for tree in gated:
        wait_state(rt, next(iter(tree["activities"])), "RUNNING", timeout=30)
    assert api.revoke_pipeline(rt, revoked).result
    assert api.pause_pipeline(rt, paused).result
    wait_state(rt, paused, "SUSPENDED")
    for tree in plain:
        wait_state(rt, tree["id"], "FINISHED", timeout=60)
    assert_exact(rt.store)
    mine = api.list_pipelines(rt, name=tag).data["counts"]
    assert mine == {"FINISHED": 40, "RUNNING": 2, "REVOKED": 1, "SUSPENDED": 1}

    assert api.resume_pipeline(rt, paused).result
    gate(f"gated-{tag}-0").set()
    gate(f"gated-{tag}-1").set()
    wait_state(rt, paused, "FINISHED", timeout=30)
    kept = assert_exact(rt.store)
    assert api.list_pipelines(rt, name=tag).data["counts"] == {"FINISHED": 41, "RUNNING": 2, "REVOKED": 1}
    unfiltered = api.list_pipelines(rt, limit=1).data
    assert unfiltered["counts"] == kept and unfiltered["total"] == sum(kept.values())

    assert rt.prune_changes(0) >= 0  # the feed's rows of ended pipelines go; the counts stay
    assert assert_exact(rt.store) == kept


def _store_rows_at_0006(url: str) -> dict[str, int]:
    """Root states (and the rows that are not roots) written as a culm at 0006 left them."""
    store = SqlStore(url, create=False)
    try:
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0006")
        rows = []
        names = ["FINISHED"] * 5 + ["RUNNING"] * 2 + ["FAILED", "REVOKED", "SUSPENDED"]
        for i, name in enumerate(names):
            root = f"root{i:02d}"
            rows.append({"node_id": root, "root_id": root, "parent_id": "", "name": name, "version": "v",
                         "created_time": float(i)})
            rows.append({"node_id": f"{root}-act", "root_id": root, "parent_id": root, "name": "FINISHED",
                         "version": "v", "created_time": float(i)})
        # A pause appointed on a node not reached yet: no root, not a pipeline.
        rows.append({"node_id": "ahead", "root_id": "", "parent_id": "", "name": "SUSPENDED", "version": "v",
                     "created_time": None})
        with store.engine.begin() as conn:
            conn.execute(schema.state.insert(), rows)
    finally:
        store.dispose()
    return {"FINISHED": 5, "RUNNING": 2, "FAILED": 1, "REVOKED": 1, "SUSPENDED": 1}


def test_revision_0007_counts_the_stored_pipelines_and_downgrades_cleanly(server_database):
    from sqlalchemy import inspect

    expected = _store_rows_at_0006(server_database)
    assert migrate.upgrade_database(server_database) == migrate.HEAD_REVISION
    store = SqlStore(server_database)
    try:
        assert kept_and_counted(store) == (expected, expected)
        with store.transaction() as unit:
            counts, _rows = unit.list_pipelines(api_query())
        assert counts == expected
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0006")
        with store.engine.connect() as conn:
            assert "culm_root_count" not in inspect(conn).get_table_names()
    finally:
        store.dispose()


def api_query():
    from culm.core.listing import make_query

    return make_query()


def test_a_sqlite_file_with_pipelines_gets_its_counts_when_opened(tmp_path):
    """An embedded database of the previous culm, with real runs in it, is counted on open."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with culm.Runtime(url) as rt:
        trees = [named_tree(f"old-{i}") for i in range(3)]
        for tree in trees:
            run(rt, tree)
        assert rt.wait_idle(30)
        gated = named_tree("old-gated", code="t_gate")
        run(rt, gated)
        wait_state(rt, next(iter(gated["activities"])), "RUNNING")
        assert api.revoke_pipeline(rt, gated["id"]).result
        gate("old-gated").set()
        assert rt.wait_idle(30)
        before = api.list_pipelines(rt).data["counts"]
    assert before == {"FINISHED": 3, "REVOKED": 1}
    store = SqlStore(url)
    try:
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0006")  # as the previous culm left it
    finally:
        store.dispose()
    with culm.Runtime(url) as rt:  # opening upgrades an embedded file
        assert migrate.current_version(rt.store) == migrate.HEAD_REVISION
        assert assert_exact(rt.store) == before
        assert api.list_pipelines(rt).data["counts"] == before


def test_recount_repairs_counts_of_rows_written_behind_the_writers(tmp_path):
    """Rows added by hand (or by a culm at 0006 still running after the upgrade) are not in the kept
    counts until ``recount_roots`` (``culm db recount``) counts them again."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = SqlStore(url)
    try:
        with store.engine.begin() as conn:
            conn.execute(schema.state.insert(), [{"node_id": "hand", "root_id": "hand", "parent_id": "",
                                                  "name": "FAILED", "version": "v"}])
        assert kept_and_counted(store) == ({}, {"FAILED": 1})
        with store.transaction() as unit:
            assert unit.recount_roots() == {"FAILED": 1}
        assert assert_exact(store) == {"FAILED": 1}
    finally:
        store.dispose()
