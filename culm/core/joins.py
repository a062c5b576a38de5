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
    go (the parents' rows locked last and in id order), and wake each parent whose last child
    arrived, at the gateway (on a server database, outside a savepoint, in the database, with
    the commit and in its round trip: see ``Unit.ack_children_at_commit``)."""
    joins, step.joins = step.joins, []
    if not joins:
        return
    counts = collections.Counter(j.parent_id for j in joins)
    gateways: dict[str, str] = {}
    for join in joins:
        gateways.setdefault(join.parent_id, join.node_id)
    # A server database decides the wakes with the commit, in its round trip: the woken parents'
    # tasks join the step's when it is through.
    if step.unit.ack_children_at_commit(counts, gateways, step.tasks.extend):
        return
    parents = step.unit.ack_children(counts)
    woken: set[str] = set()
    for join in joins:
        parent = parents.get(join.parent_id)
        if parent is None:
            raise LookupError(f"converge gateway {join.node_id}: process {join.parent_id}, the parent of process "
                              f"{join.child_id} that reached it, is not stored (the branches it forked cannot join)")
        if parent.ack_num == parent.need_ack and parent.id not in woken:
            woken.add(parent.id)
            step.unit.update_process(parent.id, asleep=False, ack_num=0, need_ack=0, current_node_id=join.node_id)
            step.add_task(
                TaskRecord(new_id(), EXECUTE, parent.id, join.node_id, parent.root_id, due=now(),
                           priority=parent.priority, queue=parent.queue)
            )
