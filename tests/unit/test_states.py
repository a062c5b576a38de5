"""The transition table: shape, and properties that must hold for any pair of states."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("odd", [["RUNNING"], {"RUNNING": 1}, None, 3, states.StateType.RUNNING])
def test_anything_not_a_state_name_is_an_unknown_state(odd: object) -> None:
    # The contract: False for an unknown state; a list or a dict is one too (bamboo raises TypeError).
    # An enum member is not a state name either, as in bamboo, whose table is keyed by the values.
    assert states.can_transit(odd, "FAILED") is False  # type: ignore[arg-type]
    assert states.can_transit("RUNNING", odd) is False  # type: ignore[arg-type]


def test_bamboos_inverted_transition_table_is_there() -> None:
    # bamboo_engine.states.INVERTED_TRANSITION: the states RUNNING may go back to.
    assert states.INVERTED_TRANSITION == {"RUNNING": frozenset({"READY", "FINISHED"})}
