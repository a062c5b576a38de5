"""What a node handler tells the engine to do next."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from culm.core.run import Run


@dataclass(frozen=True, slots=True)
class Next:
    """The node is done; the same process continues at ``node_id``."""

    node_id: str


@dataclass(frozen=True, slots=True)
class Sleep:
    """The process waits (failure, schedule, join of forked children)."""


@dataclass(frozen=True, slots=True)
class Die:
    """The process has nothing more to do."""


@dataclass(frozen=True, slots=True)
class Invoke:
    """User code must run outside the transaction; ``resume`` takes its result in the next one.

    The walker fills in where the task stood when the call was handed out (``node_id``,
    ``version``), so that a result arriving after another runner took the task over is dropped,
    and the run's root (``root_id``: a runner handed only the task's id knows it from here, and
    reads the walk that applies the result ahead, with its claim).
    """

    call: Callable[[], object]
    # Takes the node's Run and what ``call`` returned (or the exception it raised); each
    # handler's ``resume`` knows the type its own ``call`` returns.
    resume: Callable[[Run, Any], Outcome]
    node_id: str = ""
    version: str | None = None
    root_id: str = ""


Outcome = Next | Sleep | Die | Invoke

SLEEP = Sleep()
DIE = Die()
