"""Arming and disarming a node's deadline: the task row that enforces its ``timeout_config``.

A deadline is a task row of kind ``TIMEOUT``, written in the transaction that hands out the
activity's first user code of a run, due ``seconds`` after the node went RUNNING, with the run's
version as ``running_version``. Being a row, it survives any crash of the process that wrote it
and fires from the database (the embedded sweeper, a worker's relay); :mod:`culm.core.timeouts`
applies it. Its id is derived from the version, so a replay of the same run (after a crash) finds
its deadline armed and keeps it: the clock does not start again. A retry, a loop iteration or a
re-entry makes a new version, hence a fresh deadline.

Only activities whose tree enables a timeout get here: a tree without one pays nothing.
"""

from __future__ import annotations

from culm.core.records import TIMEOUT, TaskRecord, now
from culm.core.run import Run

PREFIX = "timeout-"


def task_id(version: str) -> str:
    """The id of the deadline of the run with state ``version`` (fits the 64-character ids)."""
    return PREFIX + version


def arm(run: Run) -> None:
    """Write the deadline of ``run``'s node (an activity with an enabled timeout), unless this run
    has one already (a replay)."""
    timeout = run.node.timeout
    assert timeout is not None
    st, proc = run.state, run.proc
    tid = task_id(st.version)
    if run.unit.get_task(tid) is not None:
        return
    started = st.started_time if st.started_time is not None else now()
    run.step.add_task(TaskRecord(tid, TIMEOUT, proc.id, run.node.id, proc.root_id, due=started + timeout.seconds,
                                 running_version=st.version, priority=proc.priority, queue=proc.queue))


def disarm(run: Run) -> None:
    """Drop the deadline of ``run`` (its node finished or failed in time)."""
    run.unit.delete_task(task_id(run.state.version))
