"""Children at their converge gateways, counted once per transaction.

A child process that reaches the converge gateway of its fork dies there (:mod:`culm.core.walker`)
and is counted in its parent's ``ack_num``; the last one to arrive wakes the parent at the gateway.
The walks of a transaction only note their joins (``Step.joins``); :func:`settle` counts them all
before the commit, so a batch whose walks end many branches counts them in one round trip.
"""

from __future__ import annotations

import collections

from culm.core.records import EXECUTE, TaskRecord, new_id, now
from culm.core.step import Step


def settle(step: Step) -> None:
    """Count the children that reached their converge gateways in this step's walks, all in one
    go (one round trip on a server database, the parents' rows locked last and in id order), and
    wake each parent whose last child arrived, at the gateway."""
    joins, step.joins = step.joins, []
    if not joins:
        return
    parents = step.unit.ack_children(collections.Counter(j.parent_id for j in joins))
    woken: set[str] = set()
    for join in joins:
        parent = parents.get(join.parent_id)
        if parent is None:
            raise LookupError(f"process {join.parent_id}, parent of process {join.child_id}, is not stored")
        if parent.ack_num == parent.need_ack and parent.id not in woken:
            woken.add(parent.id)
            step.unit.update_process(parent.id, asleep=False, ack_num=0, need_ack=0, current_node_id=join.node_id)
            step.add_task(
                TaskRecord(new_id(), EXECUTE, parent.id, join.node_id, parent.root_id, due=now(),
                           priority=parent.priority, queue=parent.queue)
            )
