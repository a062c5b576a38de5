"""Field-by-field copies of the records stores hand out (callers may change what they get).

Written out rather than ``dataclasses.replace``: stores copy records at every read, and the
generic copy costs several times more.
"""

from __future__ import annotations

from culm.core.records import ProcessRecord, ScheduleRecord, StateRecord, TaskRecord


def copy_state(s: StateRecord) -> StateRecord:
    return StateRecord(s.node_id, s.root_id, s.parent_id, s.name, s.version, s.loop, s.inner_loop, s.retry, s.skip,
                       s.error_ignored, s.created_time, s.started_time, s.archived_time)


def copy_process(p: ProcessRecord) -> ProcessRecord:
    return ProcessRecord(p.id, p.root_id, p.parent_id, p.current_node_id, p.destination_id, list(p.stack), p.asleep,
                         p.suspended, p.suspended_by, p.dead, p.ack_num, p.need_ack, p.priority, p.queue,
                         p.last_heartbeat)


def copy_task(t: TaskRecord) -> TaskRecord:
    return TaskRecord(t.id, t.kind, t.process_id, t.node_id, t.root_id, t.schedule_id, t.callback_id, t.due,
                      t.running_version, t.priority, t.queue)


def copy_schedule(s: ScheduleRecord) -> ScheduleRecord:
    return ScheduleRecord(s.id, s.node_id, s.version, s.process_id, s.type, s.finished, s.expired, s.times,
                          s.locked_until)
