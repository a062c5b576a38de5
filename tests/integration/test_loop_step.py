"""The engine loop's step (culm.core.loop) driven by hand on the memory store, as a runner drives it.

A runner holds Items, hands a batch to ``commit_batch`` and, after the commit, runs the user code
it handed out (one shape, ``UserCall``, for execute and schedule alike) and gives each outcome back
through ``UserCall.returned`` for a later batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import components  # noqa: F401 - registers the t_* components
import pytest
from engine_fixtures import node_state, outputs

import culm
from culm import api
from culm.builder import Data, EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.core import loop, states
from culm.core.loop import Item, UserCall
from culm.core.records import EXECUTE, SCHEDULE
from culm.dispatch.inline import InlineDispatcher

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def rt() -> Iterator[culm.Runtime]:
    runtime = culm.Runtime("memory://", workers=0)
    runtime.engine.dispatcher = InlineDispatcher()
    try:
        yield runtime
    finally:
        runtime.close()


def _inline(rt: culm.Runtime) -> InlineDispatcher:
    dispatcher = rt.engine.dispatcher
    assert isinstance(dispatcher, InlineDispatcher)
    return dispatcher


def one_activity(code: str, **inputs: object) -> tuple[dict[str, object], ServiceActivity]:
    act = ServiceActivity(component_code=code)
    for name, value in inputs.items():
        setattr(act.component.inputs, name, Var(type=Var.PLAIN, value=value))
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act


def raising_walk() -> tuple[dict[str, object], EmptyStartEvent]:
    """A run whose first step raises as it applies user code's result: a lazy variable, frozen at
    the start event, resolves to a lock the engine itself has to store (see test_fail_paths)."""
    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="t_poll")).extend(EmptyEndEvent())
    data = Data(inputs={"${k}": Var(type=Var.LAZY, custom_type="t_lock_var", value="x")}, pre_render_keys=["${k}"])
    return build_tree(start, data=data), start


def drive(rt: culm.Runtime) -> list[UserCall]:
    """Run batches of every ready item until none is left; the user code handed out, in order."""
    handed: list[UserCall] = []
    items = [Item(t) for t in _inline(rt).take()]
    while items:
        committed = loop.commit_batch(rt.engine, items)
        committed.fire()
        items = [Item(t) for t in committed.tasks]
        for call in committed.calls:  # after the commit only, outside any transaction
            handed.append(call)
            items.append(call.returned(call.run()))
    return handed


def test_execute_and_schedule_user_code_come_out_and_back_the_same_way(rt: culm.Runtime) -> None:
    tree, act = one_activity("t_poll", polls=2)
    assert api.run_pipeline(rt, tree).result

    handed = drive(rt)

    assert [call.task.kind for call in handed] == [EXECUTE, SCHEDULE, SCHEDULE]
    assert node_state(rt, tree["id"])["state"] == states.FINISHED
    assert outputs(rt, act.id)["count"] == 2


def test_a_batch_applies_every_outcome_it_holds_in_one_commit(rt: culm.Runtime) -> None:
    trees = [one_activity("t_poll", polls=1)[0] for _ in range(3)]
    for tree in trees:
        assert api.run_pipeline(rt, tree).result
    items = [Item(t) for t in _inline(rt).take()]

    first = loop.commit_batch(rt.engine, items)
    assert len(first.calls) == 3 and first.applied == []  # three executes handed out, nothing applied
    back = [call.returned(call.run()) for call in first.calls]
    second = loop.commit_batch(rt.engine, back)

    assert second.applied == back  # the three outcomes are durable in one commit: their slots are free
    assert [task.kind for task in second.tasks] == [SCHEDULE] * 3  # their polls, as follow-up tasks


def test_a_task_whose_step_raises_fails_its_node_and_the_rest_of_the_batch_commits(rt: culm.Runtime) -> None:
    bad_tree, bad = raising_walk()
    good_tree, good = one_activity("t_poll", polls=1)
    for tree in (bad_tree, good_tree):
        assert api.run_pipeline(rt, tree).result

    drive(rt)

    assert node_state(rt, bad.id)["state"] == states.FAILED
    assert "engine error while applying the result of the user code of node " + bad.id in outputs(rt, bad.id)["ex_data"]
    assert node_state(rt, good_tree["id"])["state"] == states.FINISHED
    assert outputs(rt, good.id)["count"] == 1


def test_an_interruption_of_the_database_ends_the_batch_uncommitted_with_its_items_as_they_came(
    rt: culm.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, act = raising_walk()
    assert api.run_pipeline(rt, tree).result
    first = loop.commit_batch(rt.engine, [Item(t) for t in _inline(rt).take()])
    (call,) = first.calls
    item = call.returned(call.run())
    outcome = item.result

    # The store calls the error an interruption (a lost connection would be one on a server).
    monkeypatch.setattr(rt.store, "is_interruption", lambda exc: True)
    with pytest.raises(Exception, match="lock|Unstorable"):
        loop.commit_batch(rt.engine, [item])
    monkeypatch.undo()

    assert (item.waiting, item.result, item.invoke) == (True, outcome, call.item.invoke)
    assert node_state(rt, act.id)["state"] == states.RUNNING  # nothing of the batch was committed
    again = loop.commit_batch(rt.engine, [item])  # the runner tries it again
    assert again.done == [item.task.id] and node_state(rt, act.id)["state"] == states.FAILED
