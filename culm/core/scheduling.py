"""The schedule path: one poll or one callback of an activity that is waiting."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from culm._printable import engine_logger
from culm.core import revoking, states
from culm.core.engine import Engine
from culm.core.handlers.activity import as_result, make_call, record_call, settle
from culm.core.outcomes import Next
from culm.core.ports import Unit
from culm.core.records import EXECUTE, SCHEDULE, ScheduleRecord, StateRecord, TaskRecord, now
from culm.core.run import Run, VersionLostError
from culm.core.service_call import CallResult, ServiceCall
from culm.core.step import Step

logger = engine_logger("culm.engine")

# A multiple callback that is not first in line is woken when the one before it is applied
# (_wake_next_callback); it also looks again after this long, should that wake-up be lost (a crash
# between the commit and the hand-over, a message the broker dropped).
MULTI_CALLBACK_RETRY_SECONDS = 1.0
EARLY_CALLBACK_RETRY_SECONDS = 0.05
PARKED_CALLBACK_RETRY_SECONDS = 1.0


def schedule_prepare(engine: Engine, step: Step, task_id: str) -> Callable[[], CallResult] | None:
    """Claim the task and check the schedule is still current; returns the call to make."""
    prepared = prepare_call(engine, step, task_id)
    return prepared[0] if prepared is not None else None


def prepare_call(engine: Engine, step: Step, task_id: str) -> tuple[Callable[[], CallResult], int] | None:
    """:func:`schedule_prepare`, and which call of its schedule the call is (the schedule's
    ``times`` now, for :func:`schedule_apply` to tell a stale result of a poll)."""
    prepared = _prepare(engine, step, task_id)
    if prepared is None:
        return None
    call, times, callback_data = prepared
    return functools.partial(call.schedule, times, callback_data), times


def _prepare(engine: Engine, step: Step, task_id: str) -> tuple[ServiceCall, int, object] | None:
    owner, until, at = engine.lease()
    unit = step.unit
    task = unit.claim_task(task_id, owner, until, at)
    if task is None:
        return None
    if task.kind != SCHEDULE:
        # A stale or repeated message: the row has since become the execute that follows the
        # schedule (another runner applied the last call). Deleting it would strand the process:
        # hand it back to run as what it is now.
        unit.update_task(task_id, owner=None, claimed_until=None)
        step.requeue(task_id)
        return None
    if task.due > at:
        # Not due yet: a second message of this timer (a relay sends one while the submitter has
        # not marked it published; a broker's countdown runs on another clock), or the message of
        # the poll before this one, arriving after that poll moved ``due`` on. Running it now
        # would call the component early, out of its interval: hand the row back to wait.
        unit.update_task(task_id, owner=None, claimed_until=None)
        step.requeue(task_id)
        return None
    st = unit.get_state(task.node_id)
    if task.schedule_id is None and task.callback_id is not None:
        sched = _await_schedule(step, task, st, at)
        if sched is None:
            return None
    else:
        sched = unit.get_schedule(task.schedule_id) if task.schedule_id else None
    proc = unit.get_process(sched.process_id) if sched else None
    if sched is None or sched.finished or sched.expired or proc is None or proc.dead:
        unit.delete_task(task_id)
        return None
    if st is None or st.version != sched.version or st.name != states.RUNNING:
        unit.update_schedule(sched.id, expired=True)
        unit.delete_task(task_id)
        return None
    until = at + engine.settings.schedule_lock_seconds
    if sched.type != "multiple_callback":
        # A poll or a single callback has one task, which we hold: a lock on its schedule is that
        # task's own, left by a runner that died (or lost the task) mid-call. Waiting for it to run
        # out would stall the node for schedule_lock_seconds after every crash.
        unit.update_schedule(sched.id, locked_until=until)
    elif not _callback_turn(unit, task, sched, until, at):
        # An earlier callback waits, or another call of the same schedule holds the lock however
        # long it runs (a worker that died mid-call holds it no more once its task's lease is
        # freed; see the store's lock_schedule_call): come back later, never drop the work.
        unit.update_task(task_id, due=at + MULTI_CALLBACK_RETRY_SECONDS, owner=None, claimed_until=None)
        step.requeue(task_id)
        return None
    graph = engine.graph(proc.root_id, unit)
    run = Run(engine, step, graph, proc, graph.node(task.node_id), st)
    exec_data: tuple[dict[str, Any], dict[str, Any]] = unit.get_execution_data(task.node_id) or ({}, {})
    callback_data = unit.get_callback(task.callback_id) if task.callback_id else None
    call = make_call(run, dict(exec_data[0]), dict(exec_data[1]))
    return call, sched.times, callback_data


def _callback_turn(unit: Unit, task: TaskRecord, sched: ScheduleRecord, until: float, at: float) -> bool:
    """Whether the callback ``task`` carries may run now, and if so lock the schedule for it.

    A multiple-callback node's ``schedule()`` sees its callbacks one at a time, in the order they
    were accepted (as bamboo's callback data rows keep): only the task of the first one still
    waiting may call. Its row lives until its result is applied, so the next one waits for it
    however long the call runs: one call at a time by construction, not by the lock's time.
    """
    if unit.first_callback_task(task.root_id, task.node_id, sched.version) != task.id:
        return False
    return bool(unit.lock_schedule_call(sched.id, task.root_id, task.id, until, at))


def _await_schedule(step: Step, task: TaskRecord, st: StateRecord | None, at: float) -> ScheduleRecord | None:
    """The schedule an early callback belongs to; None (task postponed or dropped) if not there."""
    unit = step.unit
    sched = unit.schedule_of(task.node_id, task.running_version) if task.running_version is not None else None
    if sched is not None:
        unit.update_task(task.id, schedule_id=sched.id)
        return sched
    proc = unit.get_process(task.process_id)
    if proc is None or proc.dead:
        # Its process ended (a revoke: the execute's replay met the revoked pipeline): the schedule
        # can never appear, and the callback was for nothing.
        unit.delete_task(task.id)
    elif st is not None and st.name == states.RUNNING and st.version == task.running_version:
        # The execute may still be under way; if its process is parked on a pause, the schedule
        # cannot appear before a resume: look again now and then, not twenty times a second.
        wait = PARKED_CALLBACK_RETRY_SECONDS if proc.suspended else EARLY_CALLBACK_RETRY_SECONDS
        unit.update_task(task.id, due=at + wait, owner=None, claimed_until=None)
        step.requeue(task.id)
    else:
        unit.delete_task(task.id)
    return None


def schedule_apply(engine: Engine, step: Step, task_id: str, result: object, times: int | None = None) -> None:
    """Apply the result of one ``schedule`` call (in the transaction after the call); ``times``:
    the schedule's call count when the call was handed out (:func:`prepare_call`)."""
    unit = step.unit
    task = unit.get_task(task_id)
    if task is None or task.kind != SCHEDULE or task.schedule_id is None:
        # Another runner took the task over when our lease ran out, applied its own call and moved
        # the row on (to the execute that follows the schedule): this result is stale.
        logger.warning("dropping a stale schedule result for task %s", task_id)
        return
    sched = unit.get_schedule(task.schedule_id)
    if sched is None:
        raise LookupError(f"schedule {task.schedule_id} of task {task_id} (node {task.node_id}) is not stored")
    if times is not None and sched.type == "poll" and sched.times != times:
        # Our lease ran out mid-call, another runner took the poll over and its call of the same
        # poll was applied (it counted, and requeued the row for the next poll): this result is
        # stale. Applying it too counted one poll twice, its outputs computed from before the other.
        logger.warning("dropping a stale result of poll %d of node %s (task %s): another runner's counted",
                       times + 1, task.node_id, task_id)
        return
    st = unit.get_state(task.node_id, for_update=True)
    proc = unit.get_process(sched.process_id)
    if st is None or st.version != sched.version or st.name != states.RUNNING or proc is None or proc.dead:
        unit.update_schedule(sched.id, expired=True, locked_until=None)
        # Only while the row is still this schedule call: another runner's copy may have applied
        # its result since we read it, making the row the execute that drives the process on.
        unit.delete_task(task_id, as_read=task)
    else:
        graph = engine.graph(proc.root_id, unit)
        run = Run(engine, step, graph, proc, graph.node(task.node_id), st)
        res, outputs = record_call(run, as_result(result, {}), repeated=True)
        unit.update_schedule(sched.id, times=sched.times + 1, locked_until=None)
        step.note(st)  # a poll counted, the node still RUNNING: the wait reasons kept with a tree show the count
        try:
            _conclude(run, task_id, sched.id, res, outputs)
        except VersionLostError:
            unit.delete_task(task_id, as_read=task)
    if sched.type == "multiple_callback":
        _wake_next_callback(step, task, sched.version)


def _wake_next_callback(step: Step, task: TaskRecord, version: str) -> None:
    """The callback after ``task``'s (now applied, its row gone or moved on) may call: hand its
    task to the dispatcher now rather than at its next look (MULTI_CALLBACK_RETRY_SECONDS).

    Its row is free: a runner that found it was not its turn gave it back in the transaction
    that looked, and the row lock orders that transaction and this one (READ COMMITTED on the
    servers, one writer on SQLite), so either this one sees it free and makes it due, or that
    one looks after this one's commit and finds it first in line.
    """
    unit = step.unit
    next_id = unit.first_callback_task(task.root_id, task.node_id, version)
    if next_id is not None and next_id != task.id:
        unit.update_task(next_id, due=now(), owner=None, claimed_until=None)
        step.requeue(next_id)


def _conclude(run: Run, task_id: str, schedule_id: str, res: CallResult, outputs: dict[str, Any]) -> None:
    unit = run.unit
    if res.ok and not res.schedule_done:
        if res.schedule_type == "poll":
            unit.update_task(task_id, due=now() + max(res.schedule_after, 0), owner=None, claimed_until=None)
            run.step.requeue(task_id)
        else:
            unit.delete_task(task_id)
        return
    unit.update_schedule(schedule_id, finished=True)
    run.step.note(run.state)  # every end of a schedule is in the feed (state_tree.Tree), whatever follows
    outcome = settle(run, res.ok, outputs, scheduled=True, loop_left=res.loop_left)
    if isinstance(outcome, Next):
        # The same task row now drives the process on from the next node.
        unit.update_process(run.proc.id, asleep=False, current_node_id=outcome.node_id)
        unit.update_task(task_id, kind=EXECUTE, node_id=outcome.node_id, schedule_id=None, callback_id=None,
                         running_version=None, owner=None, claimed_until=None, due=now())
        run.step.requeue(task_id)
    else:
        unit.delete_task(task_id)
        if revoking.revoked_around(unit, run.proc.stack):
            # Failed in a revoked pipeline: nobody may retry or skip it, the process ends here.
            unit.update_process(run.proc.id, dead=True)
