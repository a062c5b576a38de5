"""Closing one distributed runtime must not break another one on the same broker."""

from __future__ import annotations

from culm.core.records import EXECUTE, TaskRecord, new_id, now


def test_a_closed_runtime_leaves_the_broker_pool_usable(distributed_backend) -> None:
    first = distributed_backend.runtime()
    first.close()
    second = distributed_backend.runtime()
    # A task id nobody stored: the worker that gets it finds no row and does nothing.
    ghost = TaskRecord(new_id(), EXECUTE, "no-process", "no-node", "no-root", due=now())
    assert second.dispatcher.publish(ghost) is True
