"""Transitions: the table is enforced where every state change goes through (``Step.set_state``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from culm import states
from culm.core.ports import Unit
from culm.core.records import StateRecord, Transition
from culm.core.step import Step
from culm.core.transitions import CREATED_AS, IllegalTransitionError, allowed, transition
from culm.errors import CulmError
from culm.storage.sql import SqlStore

NAMES = sorted(states.TRANSITIONS)
CULM = Path(__file__).resolve().parents[2] / "culm"


@given(st.sampled_from(NAMES), st.sampled_from(NAMES))
def test_transition_is_allowed_exactly_when_the_table_says_so(a: str, b: str) -> None:
    if b in states.TRANSITIONS[a]:
        assert transition("n1", a, b) == Transition("n1", a, b)
        assert allowed(a, b)
    else:
        with pytest.raises(IllegalTransitionError) as caught:
            transition("n1", a, b)
        assert str(caught.value) == f"illegal state transition of node n1: {a} -> {b}"
        assert (caught.value.node_id, caught.value.from_state, caught.value.to_state) == ("n1", a, b)
        assert not allowed(a, b)


@given(st.sampled_from(NAMES))
def test_a_row_is_created_only_in_a_created_as_state(name: str) -> None:
    if name in CREATED_AS:
        assert transition("n1", None, name).from_state is None
    else:
        with pytest.raises(IllegalTransitionError, match=f"node n1: nothing \\(a new row\\) -> {name}"):
            transition("n1", None, name)


def test_an_unknown_state_never_transits() -> None:
    for a, b in (("NOPE", states.RUNNING), (states.RUNNING, "NOPE")):
        with pytest.raises(IllegalTransitionError, match="NOPE"):
            transition("n1", a, b)


def test_the_error_is_a_culm_error() -> None:
    assert issubclass(IllegalTransitionError, CulmError)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path}/t.db")
    yield s
    s.dispose()


def _row(node_id: str, name: str) -> StateRecord:
    return StateRecord(node_id, "root", "root", name, "v1", 1, 1, 0, False, False, 1.0, 1.0, None)


def _created_running(unit: Unit) -> tuple[Step, StateRecord]:
    """A step on ``unit`` and the RUNNING state row it just created for node n1, as read back."""
    step = Step(unit)
    step.create_state(_row("n1", states.RUNNING))
    st = unit.get_state("n1")
    assert st is not None
    return step, st


def _feed(store: SqlStore) -> list[tuple[str | None, str]]:
    return [(c.from_state, c.to_state) for c in store.feed.read(0, store.feed.last_seq(), None)]


def test_set_state_refuses_an_illegal_transition_and_writes_nothing(store: SqlStore) -> None:
    with store.transaction() as unit:
        step, st = _created_running(unit)
        assert step.set_state(st, states.FINISHED, {"archived_time": 2.0})
        with pytest.raises(IllegalTransitionError, match="node n1: FINISHED -> SUSPENDED"):
            step.set_state(st, states.SUSPENDED)
        assert st.name == states.FINISHED  # the record is left as stored
    with store.reading() as unit:
        kept = unit.get_state("n1")
    assert kept is not None and (kept.name, kept.archived_time) == (states.FINISHED, 2.0)
    assert _feed(store) == [(None, states.RUNNING), (states.RUNNING, states.FINISHED)]


def test_set_state_checks_every_state_it_may_change_from(store: SqlStore) -> None:
    with store.transaction() as unit:
        step, st = _created_running(unit)
        # RUNNING -> READY is not in the table, even though FAILED -> READY is.
        with pytest.raises(IllegalTransitionError, match="node n1: RUNNING -> READY"):
            step.set_state(st, states.READY, expect=(states.FAILED, states.RUNNING))
    with store.reading() as unit:
        kept = unit.get_state("n1")
    assert kept is not None and kept.name == states.RUNNING


def test_create_state_refuses_a_row_born_in_a_later_state(store: SqlStore) -> None:
    with store.transaction() as unit:
        with pytest.raises(IllegalTransitionError, match="node n1: nothing \\(a new row\\) -> FINISHED"):
            Step(unit).create_state(_row("n1", states.FINISHED))
        assert unit.get_state("n1") is None


def test_a_stale_write_is_refused_by_version_after_the_check(store: SqlStore) -> None:
    with store.transaction() as unit:
        step = Step(unit)
        step.create_state(_row("n1", states.RUNNING))
        stale = _row("n1", states.RUNNING)
        stale.version = "v0"
        assert not step.set_state(stale, states.FAILED)
        assert stale.name == states.RUNNING
    assert _feed(store) == [(None, states.RUNNING)]


def test_only_the_step_writes_a_state_name() -> None:
    """The one place: outside storage (which implements the verbs), only ``culm/core/step.py``
    calls ``insert_state`` or passes ``name=`` to ``update_state``."""
    writers = set()
    for path in CULM.rglob("*.py"):
        if "storage" in path.relative_to(CULM).parts:
            continue
        text = path.read_text()
        for call in re.finditer(r"\.update_state\(([^()]|\([^()]*\))*\)", text):
            if re.search(r"\bname=", call.group(0)):
                writers.add(path.relative_to(CULM).as_posix())
        if ".insert_state(" in text:
            writers.add(path.relative_to(CULM).as_posix())
    assert writers == {"core/step.py"}
