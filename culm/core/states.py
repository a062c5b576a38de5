"""Node and pipeline states and the one transition table that governs them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType

CREATED = "CREATED"
READY = "READY"
LOOP_READY = "LOOP_READY"
RUNNING = "RUNNING"
SUSPENDED = "SUSPENDED"
BLOCKED = "BLOCKED"
FINISHED = "FINISHED"
FAILED = "FAILED"
REVOKED = "REVOKED"
ROLLING_BACK = "ROLLING_BACK"
ROLL_BACK_SUCCESS = "ROLL_BACK_SUCCESS"
ROLL_BACK_FAILED = "ROLL_BACK_FAILED"

ALL_STATES = frozenset(
    {
        CREATED, READY, LOOP_READY, RUNNING, SUSPENDED, BLOCKED, FINISHED, FAILED, REVOKED,
        ROLLING_BACK, ROLL_BACK_SUCCESS, ROLL_BACK_FAILED,
    }
)
ARCHIVED_STATES = frozenset({FINISHED, FAILED, REVOKED})
SLEEP_STATES = frozenset({SUSPENDED, REVOKED})
CHILDREN_IGNORE_STATES = frozenset({BLOCKED})
# A process may (re-)enter a node only from one of these (or when the node has no state yet).
ENTERABLE_STATES = frozenset({READY, FINISHED, LOOP_READY})

TRANSITIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        CREATED: frozenset(),
        READY: frozenset({RUNNING, SUSPENDED}),
        LOOP_READY: frozenset({RUNNING, SUSPENDED}),
        RUNNING: frozenset({FINISHED, FAILED, REVOKED, SUSPENDED, ROLLING_BACK}),
        SUSPENDED: frozenset({READY, REVOKED, RUNNING, ROLLING_BACK}),
        BLOCKED: frozenset(),
        FINISHED: frozenset({RUNNING, FAILED, ROLLING_BACK}),
        FAILED: frozenset({READY, FINISHED, LOOP_READY}),
        REVOKED: frozenset(),
        ROLLING_BACK: frozenset({ROLL_BACK_SUCCESS, ROLL_BACK_FAILED}),
        ROLL_BACK_SUCCESS: frozenset({READY, FINISHED}),
        ROLL_BACK_FAILED: frozenset({READY, FINISHED, ROLLING_BACK}),
    }
)


class StateType(Enum):
    """Every state as an enum member whose value is its name (bamboo's ``StateType``)."""

    CREATED = CREATED
    READY = READY
    LOOP_READY = LOOP_READY
    RUNNING = RUNNING
    SUSPENDED = SUSPENDED
    BLOCKED = BLOCKED
    FINISHED = FINISHED
    FAILED = FAILED
    REVOKED = REVOKED
    ROLLING_BACK = ROLLING_BACK
    ROLL_BACK_SUCCESS = ROLL_BACK_SUCCESS
    ROLL_BACK_FAILED = ROLL_BACK_FAILED


#: The transition table under bamboo's name.
TRANSITION = TRANSITIONS


#: bamboo's ``INVERTED_TRANSITION``: the states a RUNNING node may be set back to.
INVERTED_TRANSITION: Mapping[str, frozenset[str]] = MappingProxyType({RUNNING: frozenset({READY, FINISHED})})


def can_transit(from_state: str, to_state: str) -> bool:
    """Whether the table allows ``from_state`` -> ``to_state``.

    False for an unknown state, and for anything that is not a state name (a list, a dict, an
    enum member), where bamboo's raises TypeError for an unhashable one.
    """
    if not isinstance(from_state, str) or not isinstance(to_state, str):
        return False
    allowed = TRANSITIONS.get(from_state)
    return allowed is not None and to_state in allowed


__all__ = [
    "CREATED", "READY", "LOOP_READY", "RUNNING", "SUSPENDED", "BLOCKED", "FINISHED", "FAILED",
    "REVOKED", "ROLLING_BACK", "ROLL_BACK_SUCCESS", "ROLL_BACK_FAILED", "ALL_STATES",
    "ARCHIVED_STATES", "SLEEP_STATES", "CHILDREN_IGNORE_STATES", "ENTERABLE_STATES",
    "TRANSITIONS", "can_transit", "StateType", "TRANSITION", "INVERTED_TRANSITION",
]
