"""What a poll of ``get_pipeline_states`` sends to a server database (PostgreSQL, MariaDB), counted
at the driver by ``python -m bench.poll_trips``'s counter: one round trip when nothing changed, and
an answer always equal to a full read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from engine_fixtures import run, wait_state
from test_state_tree import act, full_read_keeping

from culm import api
from culm.builder import build_tree

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.poll_trips import Counter, _driver_counted  # noqa: E402 - the bench package lives at the repository root

pytestmark = pytest.mark.timeout(120)


def _parallel_callbacks(n):
    """start -> n branches, each a t_callback activity -> converge -> end (and those activities)."""
    from culm.builder import ConvergeGateway, EmptyEndEvent, EmptyStartEvent, ParallelGateway

    start, end, pg, cg = EmptyStartEvent(), EmptyEndEvent(), ParallelGateway(), ConvergeGateway()
    waiting = [act("t_callback") for _ in range(n)]
    start.extend(pg).connect(*waiting).converge(cg).extend(end)
    return build_tree(start), waiting


def test_a_poll_on_a_server_database_is_one_round_trip_unless_its_pipeline_changed(server_database):
    """PostgreSQL and MariaDB: a poll that finds nothing new is one statement; one that finds a
    change of its pipeline is two round trips (the feed, then the changed rows with their schedules
    and the live processes); a pipeline an earlier poll already found changed is one (its rows go
    with the feed's read). Every answer equals a full read."""
    import culm
    from culm.storage import migrate

    migrate.upgrade_database(server_database)
    rt = culm.Runtime(server_database, workers=2)
    counter = Counter()
    try:
        pipelines = [_parallel_callbacks(3) for _ in range(2)]
        roots = [run(rt, tree) for tree, _ in pipelines]
        for _, waiting in pipelines:
            for a in waiting:
                wait_state(rt, a.id, "RUNNING")
        assert rt.wait_idle(30)
        for root in roots:
            api.get_pipeline_states(rt, root)  # read in full once

        def poll(root):
            counter.counts.clear()
            with counter.counting():
                data = api.get_pipeline_states(rt, root).data
            return data, counter.counts["round trips"], counter.counts["statements"]

        with _driver_counted(server_database, counter):
            for root in roots * 3:
                data, trips, statements = poll(root)
                assert (trips, statements) == (1, 1), counter.log
                assert data == full_read_keeping(rt, root)
            for root, (_, waiting) in zip(roots, pipelines, strict=True):  # one branch of each moves on
                version = full_read_keeping(rt, root)[root]["children"][waiting[0].id]["version"]
                assert api.callback(rt, waiting[0].id, version, {}).result
            for _, waiting in pipelines:
                wait_state(rt, waiting[0].id, "FINISHED")
            assert rt.wait_idle(30)
            first, trips, _ = poll(roots[0])
            assert trips <= 2, counter.log
            second, trips, _ = poll(roots[1])  # found changed by the poll before: its rows go with the feed's read
            assert trips == 1, counter.log
            assert first == full_read_keeping(rt, roots[0]) and second == full_read_keeping(rt, roots[1])
            for data, (_, waiting) in zip((first, second), pipelines, strict=True):
                children = next(iter(data.values()))["children"]
                assert children[waiting[0].id]["state"] == "FINISHED"
                assert [children[a.id]["wait_reason"]["kind"] for a in waiting[1:]] == ["callback", "callback"]
    finally:
        rt.close()
