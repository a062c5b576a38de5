"""Engine bugs the deterministic simulation found, each replayed step by step.

The engine is driven by hand through an :class:`~culm.dispatch.inline.InlineDispatcher` (no
threads): every transaction, user-code call, crash and lease loss happens exactly where the test
says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import components  # noqa: F401 - registers the t_* components
import pytest
from storm_ops import chain
from support import wait_until

import culm
from culm import api
from culm.builder import Data, Params, ServiceActivity, SubProcess, Var, build_tree
from culm.core import scheduling, walker
from culm.core.invariants import check
from culm.core.records import SCHEDULE
from culm.core.snapshots import read_snapshot
from culm.dispatch.inline import InlineDispatcher


def _runtime(tmp_path: Path) -> tuple[culm.Runtime, InlineDispatcher]:
    rt = culm.Runtime(f"sqlite:///{tmp_path}/sim.db", workers=0)
    inline = InlineDispatcher()
    rt.engine.dispatcher = inline
    return rt, inline


def _execute(rt: culm.Runtime, task_id: str, pending: Any = None, *, claim: bool = True) -> Any:
    with rt.engine.step() as step:
        return walker.execute_step(rt.engine, step, task_id, pending, claim=claim)


def _start(rt: culm.Runtime, inline: InlineDispatcher, tree: dict[str, Any]) -> Any:
    """Run ``tree``; returns its first task (not run yet)."""
    assert api.run_pipeline(rt, tree).result
    (task,) = inline.take()
    return task


def _restart(rt: culm.Runtime) -> None:
    """A crash and a new runner: leases are void (what the runner holds in memory is gone)."""
    with rt.store.transaction() as unit:
        unit.release_leases()


def _tasks(rt: culm.Runtime) -> list[Any]:
    with rt.store.reading() as unit:
        return unit.pending_tasks(float("inf"), 100)


def test_resume_after_a_replay_parked_by_a_pause_runs_the_node_again(tmp_path: Path) -> None:
    """Crash while a component runs, pause, restart: the replayed task parks on the pause and the
    node stays RUNNING. Resuming must replay the node's run, not find it busy and sleep for good."""
    act = ServiceActivity(component_code="t_none")
    tree = build_tree(chain(act))
    rt, inline = _runtime(tmp_path)
    with rt:
        task = _start(rt, inline, tree)
        assert _execute(rt, task.id) is not None  # the component's call is handed out ... and lost
        assert api.pause_pipeline(rt, tree["id"]).result
        _restart(rt)
        assert _execute(rt, task.id) is None  # the replay parks on the paused pipeline
        assert api.resume_pipeline(rt, tree["id"]).result
        (woken,) = inline.take()
        invoke = _execute(rt, woken.id)
        assert invoke is not None and invoke.node_id == act.id, "the resumed process must run the node again"
        assert _execute(rt, woken.id, (invoke, walker.call_user_code(invoke)), claim=False) is None
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"


def _poll_to_its_end(rt: culm.Runtime, inline: InlineDispatcher, tree: dict[str, Any]) -> str:
    """Run a one-poll pipeline until its schedule task has become the execute that follows."""
    assert api.run_pipeline(rt, tree).result
    (task,) = inline.take()
    invoke = _execute(rt, task.id)
    assert _execute(rt, task.id, (invoke, walker.call_user_code(invoke)), claim=False) is None
    (sched,) = inline.take()
    assert sched.kind == SCHEDULE
    with rt.engine.step() as step:
        call = scheduling.schedule_prepare(rt.engine, step, sched.id)
    result = call()
    with rt.engine.step() as step:
        scheduling.schedule_apply(rt.engine, step, sched.id, result)
    (following,) = inline.take()
    assert following.id == sched.id and following.kind != SCHEDULE
    return sched.id


def _one_poll_tree() -> dict[str, Any]:
    poll = ServiceActivity(component_code="t_poll")
    poll.component.inputs.polls = Var(type=Var.PLAIN, value=1)
    return build_tree(chain(poll, ServiceActivity(component_code="t_none")))


def test_a_repeated_schedule_message_leaves_the_following_execute_alone(tmp_path: Path) -> None:
    """A schedule message delivered again after its task row became an execute (a duplicate, or a
    runner that took the task over) used to delete the row: the process was stranded."""
    rt, inline = _runtime(tmp_path)
    tree = _one_poll_tree()
    with rt:
        task_id = _poll_to_its_end(rt, inline, tree)
        _restart(rt)
        with rt.engine.step() as step:
            assert scheduling.schedule_prepare(rt.engine, step, task_id) is None
        assert [t.id for t in _tasks(rt)] == [task_id]
        (handed_back,) = inline.take()
        assert handed_back.id == task_id and handed_back.kind != SCHEDULE
        assert _execute(rt, task_id) is not None  # the activity after the poll
        assert check(read_snapshot(rt.engine, tree["id"])) == []


def test_a_stale_schedule_result_is_dropped_once_the_row_moved_on(tmp_path: Path) -> None:
    """A schedule result applied after the row became an execute used to raise (no schedule)."""
    rt, inline = _runtime(tmp_path)
    tree = _one_poll_tree()
    with rt:
        task_id = _poll_to_its_end(rt, inline, tree)
        with rt.engine.step() as step:
            scheduling.schedule_apply(rt.engine, step, task_id, True)  # must not raise
        assert [t.id for t in _tasks(rt)] == [task_id]
        assert check(read_snapshot(rt.engine, tree["id"])) == []


def test_a_stale_poll_result_is_not_counted_on_top_of_the_runner_that_took_it_over(tmp_path: Path) -> None:
    """Runner A's poll call runs while its lease runs out; runner B takes the poll over, runs the
    same poll and applies it (the row is requeued for the next poll). A's result came back after
    and was applied too: one poll counted twice, its outputs computed from before B's. A result
    names which call of its schedule it is (``prepare_call``), and a stale one is dropped."""
    rt, inline = _runtime(tmp_path)
    poll = ServiceActivity(component_code="t_poll")
    poll.component.inputs.polls = Var(type=Var.PLAIN, value=3)
    tree = build_tree(chain(poll))
    with rt:
        task = _start(rt, inline, tree)
        invoke = _execute(rt, task.id)
        assert _execute(rt, task.id, (invoke, walker.call_user_code(invoke)), claim=False) is None
        (sched,) = inline.take()
        with rt.engine.step() as step:
            a_call, a_times = scheduling.prepare_call(rt.engine, step, sched.id)  # type: ignore[misc]
        a_result = a_call()  # ... while A's lease runs out
        _restart(rt)  # B takes the task over
        with rt.engine.step() as step:
            b_call, b_times = scheduling.prepare_call(rt.engine, step, sched.id)  # type: ignore[misc]
        assert (a_times, b_times) == (0, 0)
        with rt.engine.step() as step:
            scheduling.schedule_apply(rt.engine, step, sched.id, b_call(), b_times)
        with rt.engine.step() as step:
            scheduling.schedule_apply(rt.engine, step, sched.id, a_result, a_times)  # stale: dropped
        with rt.store.reading() as unit:
            assert unit.get_schedule(unit.get_task(sched.id).schedule_id).times == 1  # type: ignore[union-attr]
        assert api.get_execution_data_outputs(rt, poll.id).data["count"] == 1
        assert check(read_snapshot(rt.engine, tree["id"])) == []


@pytest.mark.parametrize("paused", ["root", "subprocess"])
def test_an_end_reached_while_paused_parks_until_resumed(tmp_path: Path, monkeypatch: Any, paused: str) -> None:
    """On a server database a pause could commit after a walk read its stack (before walks held
    it, ``Unit.hold_states``): the walk then reached the end event of the paused (sub)pipeline and
    died there (or slept where no resume would wake it), leaving the run stuck. The end event still
    parks such a walk. Simulated by a walk that does not look at its stack."""
    act = ServiceActivity(component_code="t_none")
    sub = SubProcess(start=chain(act))
    tree = build_tree(chain(sub))
    pipeline_id = tree["id"] if paused == "root" else sub.id
    rt, inline = _runtime(tmp_path)
    with rt:
        task = _start(rt, inline, tree)
        invoke = _execute(rt, task.id)
        assert api.pause_pipeline(rt, pipeline_id).result
        with monkeypatch.context() as m:
            m.setattr(walker, "_check_stack", lambda step, proc, found: None)
            assert _execute(rt, task.id, (invoke, walker.call_user_code(invoke)), claim=False) is None
        assert check(read_snapshot(rt.engine, tree["id"])) == []
        assert api.resume_pipeline(rt, pipeline_id).result
        (woken,) = inline.take()
        assert _execute(rt, woken.id) is None
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"
        assert check(read_snapshot(rt.engine, tree["id"])) == []


def test_an_appointed_pause_committed_after_the_walk_read_the_node_holds(tmp_path: Path) -> None:
    """On a server database the walk reads a node READY, then an appointed pause commits (the
    version stays), then the walk's write: it compared only the version, so the node ran over the
    pause. Replayed by handing the walk the state record it read before the pause."""
    first, later = ServiceActivity(component_code="t_none"), ServiceActivity(component_code="t_none")
    tree = build_tree(chain(first, later))
    rt, inline = _runtime(tmp_path)
    with rt:
        assert api.run_pipeline(rt, tree).result
        assert api.pause_node_appoint(rt, later.id).result
        assert api.resume_node_appoint(rt, later.id).result  # READY, reached later
        with rt.store.reading() as unit:
            stale = unit.get_state(later.id)
        assert stale.name == "READY"
        assert api.pause_node_appoint(rt, later.id).result  # SUSPENDED again, same version
        (task,) = inline.take()
        with rt.engine.step() as step:
            graph = rt.engine.graph(tree["id"], step.unit)
            _task, proc = step.unit.task_with_process(task.id)
            try:
                walker._reenter(rt.engine, step, graph, proc, graph.node(later.id), stale)
            except walker._Stop:
                pass
            assert (proc.suspended, proc.suspended_by) == (True, later.id)
        assert node_state_name(rt, later.id) == "SUSPENDED"


def node_state_name(rt: culm.Runtime, node_id: str) -> str:
    return api.get_children_states(rt, node_id).data[node_id]["state"]


def test_an_early_callback_waits_calmly_while_its_process_is_parked(tmp_path: Path) -> None:
    """A callback that arrived before its schedule was saved looks again every 50 ms; while the
    node's process is parked on a pause (its execute replayed after a crash) the schedule cannot
    appear, and it used to keep a transaction every 50 ms going for as long as the pause lasted."""
    wait = ServiceActivity(component_code="t_callback")
    tree = build_tree(chain(wait))
    rt, inline = _runtime(tmp_path)
    with rt:
        task = _start(rt, inline, tree)
        invoke = _execute(rt, task.id)  # the execute is handed out ... and lost in a crash
        version = api.get_children_states(rt, wait.id).data[wait.id]["version"]
        assert api.callback(rt, wait.id, version, {"ok": True}).result  # early: no schedule yet
        (early,) = inline.take()
        assert api.pause_pipeline(rt, tree["id"]).result
        _restart(rt)
        assert _execute(rt, task.id) is None  # the replay parks on the pause
        with rt.engine.step() as step:
            assert scheduling.schedule_prepare(rt.engine, step, early.id) is None
        (again,) = inline.take()
        assert again.id == early.id and again.due - records_now() >= scheduling.PARKED_CALLBACK_RETRY_SECONDS / 2
        # resumed: the execute runs, the schedule appears, the callback finishes the node
        assert api.resume_pipeline(rt, tree["id"]).result
        (woken,) = inline.take()
        invoke = _execute(rt, woken.id)
        assert _execute(rt, woken.id, (invoke, walker.call_user_code(invoke)), claim=False) is None
        # The parked callback's message comes when it is due (one handed out before is handed back).
        wait_until(lambda: records_now() >= again.due, 10, 0.05, what="the parked callback to be due")
        with rt.engine.step() as step:
            call = scheduling.schedule_prepare(rt.engine, step, early.id)
        with rt.engine.step() as step:
            scheduling.schedule_apply(rt.engine, step, early.id, call())
        for following in inline.take():  # on to the end event
            assert _execute(rt, following.id) is None
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"


def records_now() -> float:
    from culm.core.records import now

    return now()


def test_a_replayed_call_of_a_node_skipped_meanwhile_is_dropped(tmp_path: Path) -> None:
    """Crash while a component runs; the operator force-fails and skips the node; the replayed
    task used to enter the (now FINISHED) node again as a loop: two walkers of one process, and
    the pipeline could finish with the node RUNNING."""
    act = ServiceActivity(component_code="t_none")
    tree = build_tree(chain(act, ServiceActivity(component_code="t_none")))
    rt, inline = _runtime(tmp_path)
    with rt:
        task = _start(rt, inline, tree)
        assert _execute(rt, task.id) is not None  # handed out ... and lost in a crash
        assert api.forced_fail_activity(rt, act.id, "stuck").result
        assert api.skip_node(rt, act.id).result
        (woken,) = inline.take()
        _restart(rt)
        assert _execute(rt, task.id) is None  # the replay is dropped
        assert [t.id for t in _tasks(rt)] == [woken.id]
        assert node_state_name(rt, act.id) == "FINISHED"
        invoke = _execute(rt, woken.id)
        assert _execute(rt, woken.id, (invoke, walker.call_user_code(invoke)), claim=False) is None
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"
        assert api.get_children_states(rt, act.id).data[act.id]["loop"] == 1
        assert check(read_snapshot(rt.engine, tree["id"])) == []


def test_an_early_callback_of_a_process_a_revoke_ended_is_dropped(tmp_path: Path) -> None:
    """Seed 21: a callback came while the node's execute ran; the pipeline was revoked (the process
    kept: its execute was under way), then the runner crashed and the execute's replay met the
    revoked pipeline and ended the process. The early callback then looked for its schedule every
    0.05 s for ever; it must be dropped."""
    act = ServiceActivity(component_code="t_callback")
    tree = build_tree(chain(act, ServiceActivity(component_code="t_none")))
    rt, inline = _runtime(tmp_path)
    with rt:
        task = _start(rt, inline, tree)
        assert _execute(rt, task.id) is not None  # the execute is handed out ... and lost
        version = api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["children"][act.id]["version"]
        assert api.callback(rt, act.id, version, {"ok": True}).result
        (early,) = inline.take()
        assert api.revoke_pipeline(rt, tree["id"]).result
        _restart(rt)
        assert _execute(rt, task.id) is None  # the replay meets the revoked pipeline: the process ends
        with rt.engine.step() as step:
            assert scheduling.schedule_prepare(rt.engine, step, early.id) is None
        assert _tasks(rt) == [] and inline.take() == []
        assert check(read_snapshot(rt.engine, tree["id"])) == []


def _drive(rt: culm.Runtime, inline: InlineDispatcher, first: Any = None) -> None:
    """Run every task (``first``, then what the inline dispatcher holds) and its user code until none is left."""
    todo = [first] if first is not None else inline.take()
    while todo:
        for task in todo:
            invoke = _execute(rt, task.id)
            while invoke is not None:
                invoke = _execute(rt, task.id, (invoke, walker.call_user_code(invoke)), claim=False)
        todo = inline.take()


def _subprocess_failing_on_entry() -> tuple[dict, Any]:
    """A tree whose SubProcess fails on entry (its params do not render while ${mark} is 0), and
    that SubProcess."""
    inner = chain(ServiceActivity(component_code="t_none"))
    sub = SubProcess(start=inner, params=Params({"${gate}": Var(type=Var.LAZY, custom_type="s_mark_gate",
                                                                value="${mark}")}))
    return build_tree(chain(sub), data=Data(inputs={"${mark}": Var(type=Var.PLAIN, value=0)})), sub


def _retried_then_paused_and_resumed(rt: Any, inline: Any, tree: dict, sub: Any) -> Any:
    """Run ``tree`` until its SubProcess fails, retry it (its params rendering now), then pause and
    resume it before the retry's task runs; returns that task, not run yet."""
    _drive(rt, inline, _start(rt, inline, tree))
    assert node_state_name(rt, sub.id) == "FAILED"  # ${mark} is 0: the params did not render
    assert api.update_context_values(rt, tree["id"], {"${mark}": 5}).result
    assert api.retry_subprocess(rt, sub.id).result
    (retried,) = inline.take()
    assert api.pause_pipeline(rt, sub.id).result
    assert api.resume_pipeline(rt, sub.id).result
    return retried


def test_a_subprocess_paused_and_resumed_before_its_retry_stepped_in_is_entered(tmp_path: Path) -> None:
    """retry_subprocess makes a subprocess that failed on entry READY and wakes its process with a
    task; a pause (READY -> SUSPENDED) and a resume (-> RUNNING) of the subprocess both commit before
    that task runs, so nothing was parked for the resume to wake. The task then found the
    subprocess RUNNING, took itself for a stale message and put the process to sleep with no task:
    stranded for good (the storm driver found it: seed 6 on PostgreSQL + Redis)."""
    import storm_components  # noqa: F401 - registers s_mark_gate

    tree, sub = _subprocess_failing_on_entry()
    rt, inline = _runtime(tmp_path)
    with rt:
        retried = _retried_then_paused_and_resumed(rt, inline, tree, sub)
        assert inline.take() == []  # no process was parked on the pause
        _drive(rt, inline, retried)
        assert check(read_snapshot(rt.engine, tree["id"])) == []
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"


def test_a_retried_subprocess_paused_and_resumed_between_the_entry_read_and_write_is_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window of the finding above, one step later: the task of retry_subprocess read the
    subprocess READY, and the pause (READY -> SUSPENDED) and the resume (-> RUNNING) both committed
    before its write of RUNNING, which found the row moved on. It took the subprocess for busy and
    put the process to sleep with no task: stranded for good (storm_driver seed 54, MariaDB +
    RabbitMQ: stranded_process at the SubProcess, RUNNING, asleep, feed FAILED, READY, SUSPENDED,
    RUNNING). The read is replayed here as the stale READY it was."""
    import dataclasses

    import storm_components  # noqa: F401 - registers s_mark_gate

    tree, sub = _subprocess_failing_on_entry()
    real = walker._reenter

    def read_before_the_pause(engine: Any, step: Any, graph: Any, proc: Any, node: Any, st: Any) -> Any:
        if node.id == sub.id and st.name == "RUNNING" and node.id not in proc.stack:
            st = dataclasses.replace(st, name="READY")  # as read before the pause and the resume
        return real(engine, step, graph, proc, node, st)

    rt, inline = _runtime(tmp_path)
    with rt:
        retried = _retried_then_paused_and_resumed(rt, inline, tree, sub)
        monkeypatch.setattr(walker, "_reenter", read_before_the_pause)
        _drive(rt, inline, retried)
        assert check(read_snapshot(rt.engine, tree["id"])) == []
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"
