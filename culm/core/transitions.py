"""State transitions: the one check of ``states.TRANSITIONS`` every state change goes through.

:func:`transition` is the only way the engine obtains a :class:`Transition` to write: it raises
:class:`IllegalTransitionError` for a change the table does not allow, so the table is enforced,
not just documented. A state row is created (``from_state`` None) only in one of
:data:`CREATED_AS`.
"""

from __future__ import annotations

from typing import NamedTuple

from culm.core import states
from culm.errors import CulmError

# A state row is created by entering a node (RUNNING), by an appointed pause before the node is
# reached (SUSPENDED), or by a fault recorded on a node its process never entered (FAILED: a task
# left pointing at a node whose row does not exist, see ``culm.core.faults``).
CREATED_AS = frozenset({states.RUNNING, states.SUSPENDED, states.FAILED})


class IllegalTransitionError(CulmError):
    """The engine tried a state change ``states.TRANSITIONS`` does not allow (an engine bug)."""

    def __init__(self, node_id: str, from_state: str | None, to_state: str) -> None:
        was = "nothing (a new row)" if from_state is None else from_state
        super().__init__(f"illegal state transition of node {node_id}: {was} -> {to_state}")
        self.node_id = node_id
        self.from_state = from_state
        self.to_state = to_state


class Transition(NamedTuple):
    """One state change of one node (``from_state`` None: the row is created)."""

    node_id: str
    from_state: str | None
    to_state: str

    @property
    def allowed(self) -> bool:
        """Whether the table allows this change (a creation: whether it creates a CREATED_AS state)."""
        return allowed(self.from_state, self.to_state)


# The table as a plain dict (a lookup in it is cheaper than in the read-only view), with the
# states a row may be created in under None.
_NEXT: dict[str | None, frozenset[str]] = {None: CREATED_AS}
_NEXT.update(states.TRANSITIONS)
_NOWHERE: frozenset[str] = frozenset()


def allowed(from_state: str | None, to_state: str) -> bool:
    """Whether ``from_state`` -> ``to_state`` is allowed (``from_state`` None: a new row)."""
    return to_state in _NEXT.get(from_state, _NOWHERE)


def check(node_id: str, from_state: str | None, to_state: str) -> None:
    """Raise IllegalTransitionError unless ``from_state`` -> ``to_state`` is allowed (the check
    :func:`transition` makes, without building the value: every state write pays for it)."""
    if to_state not in _NEXT.get(from_state, _NOWHERE):
        raise IllegalTransitionError(node_id, from_state, to_state)


def transition(node_id: str, from_state: str | None, to_state: str) -> Transition:
    """The checked transition of ``node_id``; raises IllegalTransitionError when not allowed."""
    check(node_id, from_state, to_state)
    return Transition(node_id, from_state, to_state)
