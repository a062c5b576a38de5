"""How much work a SQL store holds right now: the counts ``culm serve``'s ``/metrics`` reports.

Read at scrape time in one connection (``Runtime.work_gauges()``), so the service gets numbers,
not SQL.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import func, select

from culm.storage import schema as s


class WorkGauges(NamedTuple):
    """The store's work at one moment."""

    queued_tasks: int  # tasks due and not yet done
    oldest_unpublished_due: float | None  # when the oldest due task not yet published fell due
    running_processes: int  # processes walking a pipeline (not dead, asleep or suspended)
    open_schedules: int  # schedules (polls, callback waits) neither finished nor expired


def read_work_gauges(engine: Any, now: float) -> WorkGauges:
    """The counts of ``engine``'s database, with ``now`` (epoch seconds) deciding what is due."""
    t, p, sch = s.task, s.process, s.schedule
    with engine.connect() as conn:
        queued = conn.execute(select(func.count()).select_from(t).where(t.c.due <= now)).scalar_one()
        oldest = conn.execute(select(func.min(t.c.due)).where(t.c.published.is_(False), t.c.due <= now)).scalar_one()
        running = conn.execute(select(func.count()).select_from(p).where(
            p.c.dead.is_(False), p.c.asleep.is_(False), p.c.suspended.is_(False))).scalar_one()
        schedules = conn.execute(select(func.count()).select_from(sch).where(
            sch.c.finished.is_(False), sch.c.expired.is_(False))).scalar_one()
    return WorkGauges(queued, oldest, running, schedules)
