"""What a revoke stops at once and what it lets end by itself (bamboo's rule, spec "revoke_pipeline").

bamboo only marks the pipeline REVOKED; a process dies when it next tries to enter a node. So a
component that polls goes on polling until it finishes or fails, and only then does its process
die instead of going on. culm does the same for such a process, and stops every other process of
the revoked pipeline (or subprocess) at once, with its tasks:

* kept: a process whose node polls (a poll schedule of the node's current run is unfinished), or
  whose node's ``execute`` is under way (an execute task holds that run's version): that call
  ends and its result is recorded. If the result asks for polls, they go on as above; if it asks
  for a callback, or the node fails, the process dies there (a revoked pipeline's nodes refuse
  callbacks, retries and skips, so nothing could ever move it);
* killed: every other process (waiting at a converge gateway, for a callback, on a FAILED node,
  parked by a pause) and all its tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

from culm.core import states
from culm.core.ports import Unit
from culm.core.records import EXECUTE, SCHEDULE, ProcessRecord
from culm.core.step import Step


def stop_processes(unit: Unit, root_id: str, pipeline_id: str) -> None:
    """Kill the processes inside the revoked ``pipeline_id`` (the root or a subprocess of
    ``root_id``) but the ones whose node polls or runs its execute, and drop the killed ones' tasks."""
    procs = [p for p in unit.processes_of_root(root_id) if pipeline_id in p.stack]
    keep = still_working(unit, root_id, [p for p in procs if not p.dead])
    if not keep and pipeline_id == root_id:
        unit.kill_processes_of_root(root_id)
        unit.delete_tasks_of_root(root_id)
        return
    doomed = [p.id for p in procs if p.id not in keep]
    for process_id in doomed:
        unit.update_process(process_id, dead=True)
    unit.delete_tasks_of_processes(doomed)


def still_working(unit: Unit, root_id: str, live: Sequence[ProcessRecord]) -> set[str]:
    """The ids of the ``live`` processes whose node polls, or runs its execute, right now."""
    candidates = [p for p in live if not p.suspended]
    if not candidates:
        return set()
    found = unit.get_states([p.current_node_id for p in candidates])
    running = {nid: st.version for nid, st in found.items() if st.name == states.RUNNING}
    if not running:
        return set()
    at_run = {(p.id, p.current_node_id) for p in candidates if p.current_node_id in running}
    # Executes before schedules: a step committing between the two reads (an execute whose result
    # starts the polls) then shows in one of them at least.
    keep = {t.process_id for t in unit.tasks_of_root(root_id, EXECUTE)
            if t.running_version is not None and running.get(t.node_id) == t.running_version
            and (t.process_id, t.node_id) in at_run}
    keep.update(s.process_id for s in unit.live_schedules(list(running))
                if s.type == "poll" and not s.expired and running.get(s.node_id) == s.version
                and (s.process_id, s.node_id) in at_run)
    return keep


def revoked_around(unit: Unit, stack: Sequence[str]) -> bool:
    """Whether a pipeline of ``stack`` is REVOKED (read held, as a walk reads them: a revoke
    committing after this read waits for our commit, and then sees what we wrote)."""
    return any(st.name == states.REVOKED for st in unit.hold_states(stack).values())


def ends_after_call(step: Step, proc: ProcessRecord) -> bool:
    """Whether ``proc``, about to sleep on its node once a call's result was applied, must die
    instead: its pipeline was revoked and no poll of its goes on (this step queued none)."""
    polls = any(t.kind == SCHEDULE and t.process_id == proc.id and t.callback_id is None for t in step.tasks)
    return not polls and revoked_around(step.unit, proc.stack)
