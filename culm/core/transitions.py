"""State transitions: the one check of ``states.TRANSITIONS`` every state change goes through.

:meth:`culm.core.step.Step.set_state` and :meth:`~culm.core.step.Step.create_state`, the only
code that changes a state's name, make :func:`check` first (inlined there, on :data:`NEXT`): a
change the table does not allow raises :class:`IllegalTransitionError`, so the table is
enforced, not just documented.
:func:`transition` is the same check returning the :class:`~culm.core.records.Transition` value.
A state row is created (``from_state`` None) only in one of :data:`CREATED_AS`.
"""

from __future__ import annotations

from culm.core import states
from culm.core.records import Transition
from culm.errors import CulmError

__all__ = ["CREATED_AS", "NEXT", "NOWHERE", "IllegalTransitionError", "Transition", "allowed", "check", "transition"]

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


# The table as a plain dict (a lookup in it is cheaper than in the read-only view), with the
# states a row may be created in under None. Read-only, like the table.
NEXT: dict[str | None, frozenset[str]] = {None: CREATED_AS}
NEXT.update(states.TRANSITIONS)
NOWHERE: frozenset[str] = frozenset()


def allowed(from_state: str | None, to_state: str) -> bool:
    """Whether ``from_state`` -> ``to_state`` is allowed (``from_state`` None: a new row)."""
    return to_state in NEXT.get(from_state, NOWHERE)


def check(node_id: str, from_state: str | None, to_state: str) -> None:
    """Raise IllegalTransitionError unless ``from_state`` -> ``to_state`` is allowed (the check
    :func:`transition` makes, without building the value: every state write pays for it)."""
    if to_state not in NEXT.get(from_state, NOWHERE):
        raise IllegalTransitionError(node_id, from_state, to_state)


def transition(node_id: str, from_state: str | None, to_state: str) -> Transition:
    """The checked transition of ``node_id``; raises IllegalTransitionError when not allowed."""
    check(node_id, from_state, to_state)
    return Transition(node_id, from_state, to_state)
