"""A followed pipeline none of whose nodes has started yet (its first step not taken: a worker's
relay takes it up seconds later) is on its way: `culm run` used to say "is RUNNING and waits"
after a second and stop following it."""

from __future__ import annotations

from culm.cli.run import Stillness


def test_a_pipeline_none_of_whose_nodes_started_is_on_its_way() -> None:
    root = {"id": "p", "parent_id": "p", "state": "RUNNING", "wait_reason": None}
    still = Stillness(waiting_moves=False)
    assert still.stopped({"p": root}) is None and still.since is None


def test_a_pipeline_whose_only_node_failed_is_not() -> None:
    root = {"id": "p", "parent_id": "p", "state": "RUNNING", "wait_reason": None}
    failed = {"id": "n", "parent_id": "p", "state": "FAILED", "wait_reason": {"kind": "failed"}}
    still = Stillness(waiting_moves=True)
    assert still.stopped({"p": root, "n": failed}) is None and still.since is not None
