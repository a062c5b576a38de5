"""A second message for a timer, before the timer is due, runs nothing.

A cluster's submitter publishes a timer (a poll due in N seconds) and then marks its row
``published``; a relay that looks between the two sends the same timer again (docs: "a duplicate
message at worst"). Both messages carry only the task id. The first one polls and moves the row's
``due`` on to the next poll; the second, arriving after that commit, found the row free and ran
the next poll at once, ``schedule_after`` seconds early: user code run out of turn, and a poll
counted that its interval never allowed (a component finishing after N polls finished early).
A message for a timer that is not due yet now hands the row back, untouched, to wait for its time.
"""

from __future__ import annotations

import time
from pathlib import Path

import components  # registers t_poll
import pytest

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components.service import StaticIntervalGenerator
from culm.core import scheduling
from culm.core.records import SCHEDULE

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def hour_between_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(components.PollService, "interval", StaticIntervalGenerator(3600))


def _poll_task(rt: culm.Runtime, root_id: str):
    with rt.store.reading() as unit:
        (task,) = unit.tasks_of_root(root_id, SCHEDULE)
    return task


def _deliver(rt: culm.Runtime, task_id: str):
    """What a worker does with one message for ``task_id``: claim it and prepare its poll."""
    with rt.engine.step() as step:
        return scheduling.prepare_call(rt.engine, step, task_id)


def test_a_duplicate_message_of_a_poll_not_due_yet_polls_nothing(
    tmp_path: Path, hour_between_polls: None
) -> None:
    start, poll, end = EmptyStartEvent(), ServiceActivity(component_code="t_poll"), EmptyEndEvent()
    poll.component.inputs.polls = Var(type=Var.PLAIN, value=3)
    start.extend(poll).extend(end)
    tree = build_tree(start)
    url = f"sqlite:///{tmp_path}/dup.db"
    with culm.Runtime(url) as rt:  # runs the execute: the first poll is an hour away
        assert api.run_pipeline(rt, tree).result
        deadline = time.monotonic() + 60
        while not _tasks(rt, tree["id"]):
            assert time.monotonic() < deadline, "the execute never scheduled the first poll"
            time.sleep(0.05)
    with culm.Runtime(url, workers=0) as rt:
        task = _poll_task(rt, tree["id"])
        before = api.get_execution_data_outputs(rt, poll.id).data
        # The relay's copy of the message arrives now, an hour before the poll is due.
        assert _deliver(rt, task.id) is None
        again = _poll_task(rt, tree["id"])
        assert (again.id, again.due) == (task.id, task.due)
        with rt.store.reading() as unit:
            assert unit.task_lease(task.id)[:2] == (None, None)  # free for the message that comes in time
        outputs = api.get_execution_data_outputs(rt, poll.id).data
        assert outputs == before, (before, outputs)  # no poll ran
        states = api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["children"]
        assert states[poll.id]["state"] == "RUNNING"
        # When it is due, the same message polls (the hold is on time, not on the task).
        with rt.store.transaction() as unit:
            unit.update_task(task.id, due=time.time() - 1)
        assert _deliver(rt, task.id) is not None


def _tasks(rt: culm.Runtime, root_id: str) -> list:
    with rt.store.reading() as unit:
        return unit.tasks_of_root(root_id, SCHEDULE)
