"""What ``culm serve`` keeps and reads in the database, reached through the runtime: the rows of
its API tokens (``Runtime.token_table()``) and the counts ``/metrics`` reports
(``Runtime.work_gauges()``), on every database, and refused by name on a memory runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import components  # noqa: F401 - registers the t_echo component
import pytest
from backends import embedded_runtime_on

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.errors import InvalidOperationError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[culm.Runtime]:
    with embedded_runtime_on(request.param, tmp_path / "service.db") as rt:
        yield rt


def test_token_rows_are_added_read_used_and_revoked_once(runtime: culm.Runtime) -> None:
    table = runtime.token_table()
    table.add("b" * 16, "viewer", "second", "00" * 16, "ab" * 32, 200.0)
    table.add("a" * 16, "admin", "first", "11" * 16, "cd" * 32, 100.0)
    assert [(r.id, r.role, r.name) for r in table.all()] == [("a" * 16, "admin", "first"),
                                                             ("b" * 16, "viewer", "second")]
    row = table.get("a" * 16)
    assert row is not None
    assert (row.salt, row.secret_hash, row.created_time, row.revoked_time, row.last_used_time) == (
        "11" * 16, "cd" * 32, 100.0, None, None)
    table.note_use("a" * 16, 150.0)
    assert table.get("a" * 16).last_used_time == 150.0  # type: ignore[union-attr]

    revoked, done = table.revoke("a" * 16, 300.0)
    assert done and revoked is not None and revoked.revoked_time == 300.0
    again, done = table.revoke("a" * 16, 400.0)
    assert not done and again is not None and again.revoked_time == 300.0  # the first revocation stands
    assert table.revoke("no-such-token", 500.0) == (None, False)
    assert table.get("no-such-token") is None
    assert table.get("b" * 16).revoked_time is None  # type: ignore[union-attr]


def test_work_gauges_count_what_is_queued_and_running(runtime: culm.Runtime) -> None:
    assert tuple(runtime.work_gauges()) == (0, None, 0, 0)
    start, act, end = EmptyStartEvent(), ServiceActivity(component_code="t_echo"), EmptyEndEvent()
    start.extend(act).extend(end)
    before = time.time()
    assert api.run_pipeline(runtime, build_tree(start)).result  # workers=0: nobody runs it
    gauges = runtime.work_gauges()
    assert (gauges.queued_tasks, gauges.running_processes, gauges.open_schedules) == (1, 1, 0)
    assert gauges.oldest_unpublished_due is not None and before - 1 <= gauges.oldest_unpublished_due <= time.time()


def test_a_memory_runtime_refuses_both_by_name() -> None:
    with culm.Runtime("memory://", workers=0) as rt:
        with pytest.raises(InvalidOperationError, match=r"API tokens live in a database.*memory://"):
            rt.token_table()
        with pytest.raises(InvalidOperationError, match=r"work gauges live in a database.*memory://"):
            rt.work_gauges()
