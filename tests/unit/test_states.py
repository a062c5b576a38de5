"""The transition table: shape, and properties that must hold for any pair of states."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from culm import states

EIGHT = ["CREATED", "READY", "RUNNING", "SUSPENDED", "BLOCKED", "FINISHED", "FAILED", "REVOKED"]


def test_every_state_has_a_row_and_rows_only_name_known_states() -> None:
    for name in EIGHT:
        assert name in states.TRANSITIONS
    for targets in states.TRANSITIONS.values():
        assert targets <= set(states.TRANSITIONS)


def test_dead_ends_and_the_bamboo_rows() -> None:
    assert states.TRANSITIONS[states.CREATED] == frozenset()
    assert states.TRANSITIONS[states.BLOCKED] == frozenset()
    assert states.TRANSITIONS[states.REVOKED] == frozenset()
    assert states.TRANSITIONS[states.FAILED] == {states.READY, states.FINISHED, states.LOOP_READY}
    assert states.TRANSITIONS[states.RUNNING] >= {states.FINISHED, states.FAILED, states.REVOKED, states.SUSPENDED}
    assert states.ARCHIVED_STATES == {states.FINISHED, states.FAILED, states.REVOKED}


@given(st.sampled_from(sorted(states.TRANSITIONS)), st.sampled_from(sorted(states.TRANSITIONS)))
def test_can_transit_agrees_with_the_table(a: str, b: str) -> None:
    assert states.can_transit(a, b) == (b in states.TRANSITIONS[a])


@given(st.text(max_size=12), st.sampled_from(sorted(states.TRANSITIONS)))
def test_unknown_states_never_transit(name: str, known: str) -> None:
    if name not in states.TRANSITIONS:
        assert not states.can_transit(name, known)
        assert states.can_transit(known, name) is False


@given(st.lists(st.sampled_from(sorted(states.TRANSITIONS)), min_size=1, max_size=30))
def test_a_revoked_node_never_moves_again(path: list[str]) -> None:
    current = states.REVOKED
    for nxt in path:
        assert not states.can_transit(current, nxt)
